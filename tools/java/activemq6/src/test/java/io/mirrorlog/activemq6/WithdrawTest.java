package io.mirrorlog.activemq6;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import io.mirrorlog.client.MirrorlogClient;
import io.mirrorlog.client.Wire;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTextMessage;
import org.apache.activemq.command.MessageAck;
import org.apache.activemq.store.ListenableFuture;
import org.apache.activemq.store.MessageStore;
import org.junit.Test;

/**
 * An add still waiting to be sent when its message is acknowledged is
 * withdrawn: neither it nor the acknowledgement reaches the journal, the
 * send's future is cancelled (the broker answers the producer), and every
 * other record keeps its place. Once sent, an append cannot be withdrawn.
 */
public class WithdrawTest {
    private static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static MirrorlogClient client(String name) throws Exception {
        return new MirrorlogClient(Arrays.asList(Mirrorlog.endpoints().split(",")), 10_000, name, 64, 1 << 20);
    }

    /** A link on {@code journal} (created, claimed), one append on the wire. */
    private static Link link(MirrorlogClient c, String journal) throws Exception {
        return new Link(c, journal, MirrorlogPersistenceAdapter.durabilityCode("local"), 1 << 20, 1, b("claim"), e -> { });
    }

    /** The journal's records from {@code from} on. */
    private static List<byte[]> records(MirrorlogClient c, String journal, long from) throws Exception {
        Wire.RecordsAnswer r = c.read(journal, from, 1000, 1 << 20);
        return r.data;
    }

    @Test
    public void anAppendNotYetSentIsWithdrawnAndNeverWritten() throws Exception {
        MirrorlogClient c = client("withdraw");
        String journal = "withdraw-link-" + System.nanoTime();
        Link l = link(c, journal);
        try {
            l.hold(true);
            CompletableFuture<Long> a = l.append(Link.one(b("a")));
            CompletableFuture<Long> x = l.append(Link.one(b("x")));
            CompletableFuture<Long> bc = l.append(Arrays.asList(b("b"), b("c")));
            assertTrue("a waiting append is withdrawn", l.withdraw(x));
            assertFalse("only once", l.withdraw(x));
            l.hold(false);
            long la = a.get(10, TimeUnit.SECONDS);
            long lb = bc.get(10, TimeUnit.SECONDS);
            assertFalse("a withdrawn append is never answered", x.isDone());
            x.cancel(false); // the caller's part (QueueStore cancels outside its lock)
            assertEquals("the records after a withdrawn one close up", la + 1, lb);
            assertFalse("a sent append is not withdrawn", l.withdraw(a));
            List<byte[]> got = records(c, journal, l.claimLsn + 1);
            assertEquals(3, got.size());
            assertArrayEquals(b("a"), got.get(0));
            assertArrayEquals(b("b"), got.get(1));
            assertArrayEquals(b("c"), got.get(2));
            assertEquals(la + 3, l.ackedEnd());
        } finally {
            l.close();
        }
    }

    @Test
    public void aLazyAppendIsEncodedOnceWhenSentInItsPlaceAndNeverIfWithdrawn() throws Exception {
        MirrorlogClient c = client("withdraw");
        String journal = "withdraw-lazy-" + System.nanoTime();
        Link l = link(c, journal);
        java.util.concurrent.atomic.AtomicInteger encodedX = new java.util.concurrent.atomic.AtomicInteger();
        java.util.concurrent.atomic.AtomicInteger encodedY = new java.util.concurrent.atomic.AtomicInteger();
        try {
            l.hold(true);
            CompletableFuture<Long> a = l.append(Link.one(b("a")));
            CompletableFuture<Long> x = l.appendLazy(() -> {
                encodedX.incrementAndGet();
                return b("x");
            }, 1);
            CompletableFuture<Long> y = l.appendLazy(() -> {
                encodedY.incrementAndGet();
                return b("y");
            }, 1);
            CompletableFuture<Long> z = l.append(Link.one(b("z")));
            assertEquals("nothing is encoded while it waits", 0, encodedX.get() + encodedY.get());
            assertTrue(l.withdraw(x));
            l.hold(false);
            long la = a.get(10, TimeUnit.SECONDS);
            long ly = y.get(10, TimeUnit.SECONDS);
            long lz = z.get(10, TimeUnit.SECONDS);
            x.cancel(false);
            assertEquals("a withdrawn lazy append is never encoded", 0, encodedX.get());
            assertEquals("a sent one is encoded once", 1, encodedY.get());
            assertEquals(la + 1, ly);
            assertEquals(ly + 1, lz);
            List<byte[]> got = records(c, journal, l.claimLsn + 1);
            assertEquals(3, got.size());
            assertArrayEquals(b("a"), got.get(0));
            assertArrayEquals(b("y"), got.get(1));
            assertArrayEquals(b("z"), got.get(2));
        } finally {
            l.close();
        }
    }

    @Test
    public void aMessageAcknowledgedBeforeItsAddWasSentIsNeverWritten() throws Exception {
        String journal = "withdraw-store-" + System.nanoTime();
        MirrorlogPersistenceAdapter pa = Mirrorlog.started(journal, "withdraw"); // the mark stays: records are read back
        MirrorlogClient c = client("withdraw-reader");
        try {
            MessageStore store = pa.createQueueMessageStore(new ActiveMQQueue("withdrawn"));
            store.start();
            ConnectionContext ctx = new ConnectionContext();
            ActiveMQTextMessage consumed = Mirrorlog.message("ID:withdraw-1:1:1:1", 1, new ActiveMQQueue("withdrawn"));
            ActiveMQTextMessage kept = Mirrorlog.message("ID:withdraw-1:1:1:1", 2, new ActiveMQQueue("withdrawn"));
            long end = pa.link().ackedEnd();
            pa.link().hold(true);
            ListenableFuture<Object> f1 = store.asyncAddQueueMessage(ctx, consumed);
            ListenableFuture<Object> f2 = store.asyncAddQueueMessage(ctx, kept);
            assertEquals(2, store.getMessageCount());
            MessageAck ack = new MessageAck();
            ack.setAckType(MessageAck.STANDARD_ACK_TYPE);
            ack.setLastMessageId(consumed.getMessageId());
            ack.setMessageCount(1);
            store.removeAsyncMessage(ctx, ack);
            assertTrue("the consumed message's send is cancelled", f1.isCancelled());
            try {
                f1.get(1, TimeUnit.SECONDS);
                throw new AssertionError("a withdrawn add's future completed");
            } catch (CancellationException expected) {
                // the broker ignores it and answers the producer
            }
            assertEquals(1, store.getMessageCount());
            pa.link().hold(false);
            f2.get(10, TimeUnit.SECONDS);
            List<byte[]> got = records(c, journal, end);
            assertEquals("only the kept message's add is written (no add, no ack of the consumed one)", 1,
                    got.size());
            assertEquals(Codec.ADD, Codec.decode(got.get(0)).type);
            assertEquals(kept.getMessageId(), store.getMessage(kept.getMessageId()).getMessageId());

            // Not waiting any more: the acknowledgement is written.
            ack.setLastMessageId(kept.getMessageId());
            store.removeAsyncMessage(ctx, ack);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(10);
            while (records(c, journal, end).size() < 2 && System.nanoTime() < deadline) {
                Thread.sleep(10);
            }
            got = records(c, journal, end);
            assertEquals(2, got.size());
            assertEquals(Codec.REMOVE, Codec.decode(got.get(1)).type);
            assertEquals(0, store.getMessageCount());
        } finally {
            c.close(1000);
            pa.stop();
        }
    }
}
