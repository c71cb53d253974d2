package io.mirrorlog.activemq6;

import junit.framework.Test;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.RecoveryBrokerTest;

/** ActiveMQ's RecoveryBrokerTest: what a restart keeps. */
public class MirrorlogRecoveryBrokerTest extends RecoveryBrokerTest {
    @Override
    protected void configureBroker(BrokerService broker) throws Exception {
        super.configureBroker(broker);
        StoreTests.mount(broker, "recovery");
    }

    public static Test suite() {
        return suite(MirrorlogRecoveryBrokerTest.class);
    }
}
