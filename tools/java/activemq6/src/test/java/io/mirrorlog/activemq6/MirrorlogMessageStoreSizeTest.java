package io.mirrorlog.activemq6;

import org.apache.activemq.store.AbstractMessageStoreSizeTest;
import org.apache.activemq.store.MessageStore;

/** ActiveMQ's AbstractMessageStoreSizeTest: a queue store's message count and size statistics. */
public class MirrorlogMessageStoreSizeTest extends AbstractMessageStoreSizeTest {
    private MirrorlogPersistenceAdapter adapter;
    private MessageStore store;

    @Override
    protected void initStore() throws Exception {
        adapter = Mirrorlog.adapter("store-size");
        adapter.deleteAllMessages();
        adapter.start();
        store = adapter.createQueueMessageStore(destination);
        store.start();
    }

    @Override
    protected void destroyStore() throws Exception {
        if (store != null) {
            store.stop();
        }
        if (adapter != null) {
            adapter.stop();
        }
    }

    @Override
    protected MessageStore getMessageStore() {
        return store;
    }
}
