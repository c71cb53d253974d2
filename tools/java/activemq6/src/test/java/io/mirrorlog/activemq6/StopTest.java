package io.mirrorlog.activemq6;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTextMessage;
import org.apache.activemq.store.ListenableFuture;
import org.apache.activemq.store.MessageStore;
import org.junit.Test;

/**
 * A clean stop writes what the broker handed over and has not been sent yet
 * (KahaDB drains its async store tasks at stop): an async add accepted before
 * the stop is in the journal after it. A fenced writer's stop does not wait:
 * what it holds fails at once.
 */
public class StopTest {
    private static final ActiveMQQueue QUEUE = new ActiveMQQueue("stopping");

    @Test
    public void aCleanStopWritesTheAppendsStillWaiting() throws Exception {
        String journal = "stop-drain-" + System.nanoTime();
        MirrorlogPersistenceAdapter pa = started(journal);
        MessageStore store = pa.createQueueMessageStore(QUEUE);
        store.start();
        ConnectionContext ctx = new ConnectionContext();
        ActiveMQTextMessage m1 = message(1), m2 = message(2);
        pa.link().hold(true); // both adds wait in the link's queue
        ListenableFuture<Object> f1 = store.asyncAddQueueMessage(ctx, m1);
        ListenableFuture<Object> f2 = store.asyncAddQueueMessage(ctx, m2);
        assertTrue("held: not yet written", !f1.isDone() && !f2.isDone());
        pa.stop();
        f1.get(0, TimeUnit.SECONDS); // written, not failed
        f2.get(0, TimeUnit.SECONDS);

        MirrorlogPersistenceAdapter again = started(journal);
        try {
            MessageStore s = again.createQueueMessageStore(QUEUE);
            assertEquals("both adds accepted before the stop are in the journal", 2, s.getMessageCount());
            assertNotNull(s.getMessage(m1.getMessageId()));
            assertNotNull(s.getMessage(m2.getMessageId()));
        } finally {
            again.stop();
        }
    }

    /** A stop that waited for the fenced append's answer would wait out the 10-minute bound: the test's limit catches it. */
    @Test(timeout = 60_000)
    public void aFencedWritersStopFailsWhatWaitsWithoutWaiting() throws Exception {
        String journal = "stop-fenced-" + System.nanoTime();
        MirrorlogPersistenceAdapter pa = started(journal);
        pa.setStopDrainMs(600_000);
        MessageStore store = pa.createQueueMessageStore(QUEUE);
        store.start();
        pa.link().hold(true);
        ListenableFuture<Object> f = store.asyncAddQueueMessage(new ConnectionContext(), message(1));
        MirrorlogPersistenceAdapter later = started(journal); // claims the journal: pa is fenced
        try {
            pa.stop(); // the fenced append is answered (failed): nothing left to wait for
            try {
                f.get(0, TimeUnit.SECONDS);
                fail("a fenced writer's add was answered");
            } catch (ExecutionException expected) {
                assertTrue(expected.getCause().getMessage(), expected.getCause().getMessage().contains("fenced"));
            }
            assertEquals("the fenced writer's add is not in the journal", 0,
                    later.createQueueMessageStore(QUEUE).getMessageCount());
        } finally {
            later.stop();
        }
    }

    private static MirrorlogPersistenceAdapter started(String journal) throws Exception {
        return Mirrorlog.started(journal, "stop");
    }

    private static ActiveMQTextMessage message(long seq) throws Exception {
        return Mirrorlog.message("ID:stop-1:1:1:1", seq, QUEUE);
    }
}
