package io.mirrorlog.activemq6;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import io.mirrorlog.client.MirrorlogClient;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.Test;

/**
 * Appends handed over while the wire is full (one append on it, not yet
 * answered) wait in the queue without waking the link's sender, and leave
 * together as one batch once the answer comes, in the order they were
 * handed over. The appliance is slowed below the link by the fault proxy
 * in front of it (paused, it holds what it was sent); the link and the
 * client run unchanged.
 */
public class GroupCommitTest {
    private static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    public void appendsQueuedBehindAFullWireDoNotWakeTheSenderAndLeaveAsOneBatch() throws Exception {
        MirrorlogClient c = new MirrorlogClient(Collections.singletonList(Mirrorlog.required("mirrorlog.faultproxy")),
                10_000, "group-commit", 64, 1 << 20);
        String journal = "group-commit-" + System.nanoTime();
        Link l = new Link(c, journal, MirrorlogPersistenceAdapter.durabilityCode("local"), 1 << 20, 1, b("claim"),
                e -> { });
        try {
            Mirrorlog.faultProxy("pause");
            CompletableFuture<Long> first = l.append(Link.one(b("first")));
            long batches = l.batches.get();
            // Give the sender time to park; then each append is handed
            // over while it is parked and the wire is full.
            Thread.sleep(20);
            long idle = l.idleTurns.get();
            long start = System.nanoTime();
            List<CompletableFuture<Long>> queued = new ArrayList<>();
            for (int i = 0; i < 20; i++) {
                queued.add(l.append(Link.one(b("q" + i))));
                Thread.sleep(2);
            }
            long idleWhileFull = l.idleTurns.get() - idle;
            long safetyNetTurns = 1 + TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - start) / 50;
            assertFalse("the first append is held on the wire", first.isDone());
            assertEquals("nothing more was sent while the wire was full", batches, l.batches.get());
            // At most the turns of the sender's 50 ms safety net; a
            // wake-up per append would be about 20.
            assertTrue("the sender woke " + idleWhileFull + " times for appends it could not send",
                    idleWhileFull <= safetyNetTurns);

            Mirrorlog.faultProxy("resume");
            long at = first.get(10, TimeUnit.SECONDS);
            for (int i = 0; i < queued.size(); i++) {
                assertEquals("the queued appends follow in the order handed over", at + 1 + i,
                        (long) queued.get(i).get(10, TimeUnit.SECONDS));
            }
            assertEquals("the 20 queued appends left as one batch after the first", batches + 1,
                    l.batches.get());
            List<byte[]> got = c.read(journal, at, 1000, 1 << 20).data;
            assertEquals(21, got.size());
            assertArrayEquals(b("first"), got.get(0));
            for (int i = 0; i < 20; i++) {
                assertArrayEquals(b("q" + i), got.get(1 + i));
            }
        } finally {
            Mirrorlog.faultProxy("resume");
            l.close();
        }
    }
}
