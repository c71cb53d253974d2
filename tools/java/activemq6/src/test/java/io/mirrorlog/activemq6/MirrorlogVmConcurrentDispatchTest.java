package io.mirrorlog.activemq6;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Collection;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.AbstractVmConcurrentDispatchTest;
import org.junit.runner.RunWith;
import org.junit.runners.Parameterized;

/**
 * ActiveMQ's AbstractVmConcurrentDispatchTest: messages sent over the VM
 * transport while dispatched concurrently with their store (the adapter's
 * async adds) arrive intact, for each message type, with and without
 * reduceMemoryFootprint, on a queue and on a topic.
 */
@RunWith(Parameterized.class)
public class MirrorlogVmConcurrentDispatchTest extends AbstractVmConcurrentDispatchTest {
    @Parameterized.Parameters(name = "Type:{0}; ReduceMemoryFootPrint:{1}; UseTopic:{2}")
    public static Collection<Object[]> data() {
        Collection<Object[]> out = new ArrayList<>();
        for (MessageType t : MessageType.values()) {
            for (boolean reduce : new boolean[] {false, true}) {
                for (boolean topic : new boolean[] {false, true}) {
                    out.add(new Object[] {t, reduce, topic});
                }
            }
        }
        return out;
    }

    public MirrorlogVmConcurrentDispatchTest(MessageType messageType, boolean reduceMemoryFootPrint,
            boolean useTopic) {
        super(messageType, reduceMemoryFootPrint, useTopic);
    }

    @Override
    protected void configurePersistenceAdapter(BrokerService broker) throws IOException {
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter("vm-concurrent-dispatch");
        a.deleteAllMessages();
        broker.setPersistenceAdapter(a);
    }
}
