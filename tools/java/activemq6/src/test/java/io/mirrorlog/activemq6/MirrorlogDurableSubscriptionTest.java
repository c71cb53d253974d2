package io.mirrorlog.activemq6;

import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.usecases.DurableSubscriptionTestSupport;

/** ActiveMQ's DurableSubscriptionTestSupport: restarts, retroactive, selector changes, individual acks. */
public class MirrorlogDurableSubscriptionTest extends DurableSubscriptionTestSupport {
    @Override
    protected PersistenceAdapter createPersistenceAdapter() throws java.io.IOException {
        return Mirrorlog.adapter("durable-subs");
    }
}
