package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.usecases.DurableSubscriptionOffline1Test;

/** ActiveMQ's DurableSubscriptionOffline1Test: offline durable subscriptions (each of its parameter sets on the adapter). */
public class MirrorlogDurableSubscriptionOffline1Test extends DurableSubscriptionOffline1Test {
    public MirrorlogDurableSubscriptionOffline1Test(org.apache.activemq.TestSupport.PersistenceAdapterChoice choice,
            Boolean usePrioritySupport) {
        super(choice, usePrioritySupport);
    }

    @Override
    public PersistenceAdapter setDefaultPersistenceAdapter(BrokerService broker) throws java.io.IOException {
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter("offline1");
        broker.setPersistenceAdapter(a);
        return a;
    }
}
