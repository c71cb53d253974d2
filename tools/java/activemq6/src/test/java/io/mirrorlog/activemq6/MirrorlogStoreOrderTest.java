package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.StoreOrderTest;

/** ActiveMQ's StoreOrderTest: order across a restart. */
public class MirrorlogStoreOrderTest extends StoreOrderTest {
    @Override
    protected void setPersistentAdapter(BrokerService broker) throws Exception {
        StoreTests.mount(broker, "store-order");
    }
}
