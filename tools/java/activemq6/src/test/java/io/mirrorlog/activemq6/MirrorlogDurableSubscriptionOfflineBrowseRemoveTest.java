package io.mirrorlog.activemq6;

import java.util.ArrayList;
import java.util.Collection;
import org.apache.activemq.TestSupport;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.usecases.DurableSubscriptionOfflineBrowseRemoveTest;
import org.junit.runners.Parameterized;

/** ActiveMQ's DurableSubscriptionOfflineBrowseRemoveTest: browse an offline subscription, remove through JMX, browse again. */
public class MirrorlogDurableSubscriptionOfflineBrowseRemoveTest extends DurableSubscriptionOfflineBrowseRemoveTest {
    @Parameterized.Parameters(name = "keepDurableSubsActive_{1}")
    public static Collection<Object[]> getTestParameters() {
        // The store choice is ActiveMQ's; the adapter is mounted instead.
        Collection<Object[]> out = new ArrayList<>();
        out.add(new Object[] {TestSupport.PersistenceAdapterChoice.MEM, Boolean.TRUE});
        out.add(new Object[] {TestSupport.PersistenceAdapterChoice.MEM, Boolean.FALSE});
        return out;
    }

    public MirrorlogDurableSubscriptionOfflineBrowseRemoveTest(TestSupport.PersistenceAdapterChoice choice,
            boolean keepDurableSubsActive) {
        super(choice, keepDurableSubsActive);
    }

    @Override
    public PersistenceAdapter setDefaultPersistenceAdapter(BrokerService broker) throws java.io.IOException {
        broker.setKeepDurableSubsActive(keepDurableSubsActive);
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter("offline-browse-remove");
        broker.setPersistenceAdapter(a);
        return a;
    }
}
