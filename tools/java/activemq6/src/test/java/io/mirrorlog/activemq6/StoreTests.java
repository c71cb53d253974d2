package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;

/** ActiveMQ's store tests, each through its hook, on the mirrorlog adapter. */
public final class StoreTests {
    private StoreTests() {}

    static PersistenceAdapter fresh(String journal, boolean delete) throws Exception {
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter(journal);
        if (delete) {
            a.deleteAllMessages();
        }
        return a;
    }

    static void mount(BrokerService b, String journal) throws Exception {
        b.setPersistenceAdapter(Mirrorlog.adapter(journal));
    }
}
