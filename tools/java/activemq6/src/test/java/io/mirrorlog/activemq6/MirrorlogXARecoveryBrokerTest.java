package io.mirrorlog.activemq6;

import junit.framework.Test;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.XARecoveryBrokerTest;

/** ActiveMQ's XARecoveryBrokerTest: prepared transactions across restarts. */
public class MirrorlogXARecoveryBrokerTest extends XARecoveryBrokerTest {
    @Override
    protected void configureBroker(BrokerService broker) throws Exception {
        super.configureBroker(broker);
        StoreTests.mount(broker, "xa-recovery");
    }

    public static Test suite() {
        return suite(MirrorlogXARecoveryBrokerTest.class);
    }
}
