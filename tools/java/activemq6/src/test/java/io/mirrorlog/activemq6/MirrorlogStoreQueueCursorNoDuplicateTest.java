package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.region.cursors.StoreQueueCursorNoDuplicateTest;

/** ActiveMQ's StoreQueueCursorNoDuplicateTest: a full cache, reading past it. */
public class MirrorlogStoreQueueCursorNoDuplicateTest extends StoreQueueCursorNoDuplicateTest {
    @Override
    protected BrokerService createBroker() throws Exception {
        BrokerService b = super.createBroker();
        b.setPersistent(true);
        b.setDeleteAllMessagesOnStartup(true);
        StoreTests.mount(b, "cursor-no-dup");
        return b;
    }
}
