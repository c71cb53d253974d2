package io.mirrorlog.activemq6;

import junit.framework.Test;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.BrokerTest;

/** ActiveMQ's BrokerTest (core semantics), persistent, on the adapter. */
public class MirrorlogBrokerTest extends BrokerTest {
    @Override
    protected BrokerService createBroker() throws Exception {
        BrokerService b = new BrokerService();
        b.setPersistent(true);
        b.setUseJmx(false);
        b.setDeleteAllMessagesOnStartup(true);
        StoreTests.mount(b, "broker-test");
        return b;
    }

    public static Test suite() {
        return suite(MirrorlogBrokerTest.class);
    }
}
