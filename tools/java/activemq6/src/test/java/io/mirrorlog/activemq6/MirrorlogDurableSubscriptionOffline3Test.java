package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.usecases.DurableSubscriptionOffline3Test;

/** ActiveMQ's DurableSubscriptionOffline3Test: offline durable subscriptions with selectors (each parameter set on the adapter). */
public class MirrorlogDurableSubscriptionOffline3Test extends DurableSubscriptionOffline3Test {
    public MirrorlogDurableSubscriptionOffline3Test(org.apache.activemq.TestSupport.PersistenceAdapterChoice choice) {
        super(choice);
    }

    @Override
    public PersistenceAdapter setDefaultPersistenceAdapter(BrokerService broker) throws java.io.IOException {
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter("offline3");
        broker.setPersistenceAdapter(a);
        return a;
    }
}
