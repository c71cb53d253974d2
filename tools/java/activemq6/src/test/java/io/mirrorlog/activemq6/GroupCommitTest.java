package io.mirrorlog.activemq6;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertTrue;

import io.mirrorlog.client.MirrorlogClient;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
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
 * handed over. The appliance is slowed below the link by a relay that holds
 * its answers; the link and the client run unchanged.
 */
public class GroupCommitTest {
    private static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /**
     * A TCP relay between one client and the appliance that can hold the
     * appliance's answers (a slow appliance): bytes are kept, in order, and
     * pass on once released.
     */
    private static final class Relay implements AutoCloseable {
        private final ServerSocket server;
        private final List<Socket> sockets = Collections.synchronizedList(new ArrayList<>());
        private boolean holding; // guarded by this

        Relay(String upstream) throws IOException {
            server = new ServerSocket(0, 4, InetAddress.getLoopbackAddress());
            String[] hp = upstream.split(":");
            Thread t = new Thread(() -> {
                try {
                    while (true) {
                        Socket down = server.accept();
                        Socket up = new Socket(hp[0], Integer.parseInt(hp[1]));
                        sockets.add(down);
                        sockets.add(up);
                        pump(down.getInputStream(), up.getOutputStream(), false);
                        pump(up.getInputStream(), down.getOutputStream(), true);
                    }
                } catch (IOException closed) {
                    // the relay is closed
                }
            }, "relay-accept");
            t.setDaemon(true);
            t.start();
        }

        String endpoint() {
            return "127.0.0.1:" + server.getLocalPort();
        }

        synchronized void hold(boolean h) {
            holding = h;
            notifyAll();
        }

        private synchronized void passWhenReleased() throws InterruptedException {
            while (holding) {
                wait();
            }
        }

        private void pump(InputStream in, OutputStream out, boolean answers) {
            Thread t = new Thread(() -> {
                byte[] buf = new byte[64 * 1024];
                try {
                    int n;
                    while ((n = in.read(buf)) > 0) {
                        if (answers) {
                            passWhenReleased();
                        }
                        out.write(buf, 0, n);
                        out.flush();
                    }
                } catch (IOException | InterruptedException closed) {
                    // either side closed
                }
            }, answers ? "relay-answers" : "relay-requests");
            t.setDaemon(true);
            t.start();
        }

        @Override
        public void close() throws IOException {
            hold(false);
            server.close();
            synchronized (sockets) {
                for (Socket s : sockets) {
                    s.close();
                }
            }
        }
    }

    @Test
    public void appendsQueuedBehindAFullWireDoNotWakeTheSenderAndLeaveAsOneBatch() throws Exception {
        String endpoint = Mirrorlog.endpoints().split(",")[0];
        try (Relay relay = new Relay(endpoint)) {
            MirrorlogClient c = new MirrorlogClient(Collections.singletonList(relay.endpoint()), 10_000,
                    "group-commit", 64, 1 << 20);
            String journal = "group-commit-" + System.nanoTime();
            Link l = new Link(c, journal, MirrorlogPersistenceAdapter.durabilityCode("local"), 1 << 20, 1,
                    b("claim"), e -> { });
            try {
                relay.hold(true);
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

                relay.hold(false);
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
                l.close();
            }
        }
    }
}
