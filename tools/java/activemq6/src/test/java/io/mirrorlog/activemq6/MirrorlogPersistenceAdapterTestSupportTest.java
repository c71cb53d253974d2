package io.mirrorlog.activemq6;

import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.store.PersistenceAdapterTestSupport;

/** ActiveMQ's PersistenceAdapterTestSupport: duplicate adds, removing a destination. */
public class MirrorlogPersistenceAdapterTestSupportTest extends PersistenceAdapterTestSupport {
    @Override
    protected PersistenceAdapter createPersistenceAdapter(boolean delete) throws Exception {
        return StoreTests.fresh("pa-support", delete);
    }
}
