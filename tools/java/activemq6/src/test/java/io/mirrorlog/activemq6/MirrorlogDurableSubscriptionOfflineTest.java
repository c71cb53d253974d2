package io.mirrorlog.activemq6;

import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.usecases.DurableSubscriptionOfflineTest;

/** ActiveMQ's DurableSubscriptionOfflineTest: offline durable subscriptions, browse, unsubscribe, restart. */
public class MirrorlogDurableSubscriptionOfflineTest extends DurableSubscriptionOfflineTest {
    @Override
    public PersistenceAdapter setDefaultPersistenceAdapter(BrokerService broker) throws java.io.IOException {
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter("offline");
        broker.setPersistenceAdapter(a);
        return a;
    }
}
