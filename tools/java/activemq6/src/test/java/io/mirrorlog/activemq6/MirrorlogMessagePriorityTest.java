package io.mirrorlog.activemq6;

import junit.framework.Test;
import org.apache.activemq.store.MessagePriorityTest;
import org.apache.activemq.store.PersistenceAdapter;

/** ActiveMQ's MessagePriorityTest (prioritizedMessages: priority, then order). */
public class MirrorlogMessagePriorityTest extends MessagePriorityTest {
    @Override
    protected PersistenceAdapter createPersistenceAdapter(boolean delete) throws Exception {
        return StoreTests.fresh("priority", delete);
    }

    public static Test suite() {
        return suite(MirrorlogMessagePriorityTest.class);
    }
}
