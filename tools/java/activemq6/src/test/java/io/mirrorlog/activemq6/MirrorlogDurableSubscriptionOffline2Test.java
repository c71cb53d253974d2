package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.usecases.DurableSubscriptionOffline2Test;

/** ActiveMQ's DurableSubscriptionOffline2Test on the adapter (each parameter). */
public class MirrorlogDurableSubscriptionOffline2Test extends DurableSubscriptionOffline2Test {
    public MirrorlogDurableSubscriptionOffline2Test(Boolean param) {
        super(param);
    }

    @Override
    public PersistenceAdapter setDefaultPersistenceAdapter(BrokerService broker) throws java.io.IOException {
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter("offline2");
        broker.setPersistenceAdapter(a);
        return a;
    }
}
