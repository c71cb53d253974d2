package io.mirrorlog.activemq6;

import org.apache.activemq.JmsDurableTopicTransactionTest;
import org.apache.activemq.broker.BrokerService;

/** ActiveMQ's JmsDurableTopicTransactionTest: transacted durable topics, persistent, on the adapter. */
public class MirrorlogJmsDurableTopicTransactionTest extends JmsDurableTopicTransactionTest {
    @Override
    protected BrokerService createBroker() throws Exception {
        BrokerService b = new BrokerService();
        b.setBrokerName("localhost");
        b.setUseJmx(false);
        b.setPersistent(true);
        b.setDeleteAllMessagesOnStartup(true);
        StoreTests.mount(b, "durable-topic-tx");
        return b;
    }
}
