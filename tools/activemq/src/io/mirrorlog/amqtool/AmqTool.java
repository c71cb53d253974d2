package io.mirrorlog.amqtool;

import java.io.FileWriter;
import java.nio.charset.StandardCharsets;
import java.io.IOException;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import javax.jms.BytesMessage;
import javax.jms.Connection;
import javax.jms.DeliveryMode;
import javax.jms.JMSException;
import javax.jms.Message;
import javax.jms.MessageConsumer;
import javax.jms.MessageProducer;
import javax.jms.Queue;
import javax.jms.Session;
import javax.jms.XAConnection;
import javax.jms.XASession;
import javax.transaction.xa.XAException;
import javax.transaction.xa.XAResource;
import javax.transaction.xa.Xid;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ActiveMQXAConnectionFactory;

/**
 * JMS producer and consumer for the broker tests and benchmarks.
 *
 * <pre>
 * produce --url URL --queue Q --count N [--start K] [--size 1024] [--producers P] [--acked FILE]
 *     sends messages K..K+N-1 (persistent, one connection per producer) and
 *     appends the index of every message whose send returned to FILE; stops at
 *     the first failed send; prints "sent=… failed=… seconds=… msgs_per_s=…".
 *     Exit 0 when all were sent, 3 when a send failed.
 *     [--mode plain|tx|xa|xa-prepare] [--batch B] [--prepared FILE]: plain
 *     sends one by one; tx sends B messages in a local transaction and
 *     commits; xa in an XA transaction (start, end, prepare, commit); a
 *     message counts as acknowledged once its commit returned. xa-prepare
 *     stops after the prepare and appends "GTRID idx,idx,…" per prepared
 *     transaction to FILE (those messages are not acknowledged).
 * xa-recover --url URL --out FILE [--commit true]
 *     lists the broker's prepared XA transactions (one GTRID per line) and,
 *     with --commit, commits each; prints "prepared=N".
 * consume --url URL --queue Q [--idle-ms 5000] --out FILE
 *     receives until the queue stays empty for idle-ms, checks each body,
 *     writes every index to FILE; prints "received=… corrupt=…"; exit 3 on a corrupt body.
 * </pre>
 *
 * A body is the index (8 bytes, big-endian) followed by a pattern derived
 * from it, so the consumer checks every byte.
 */
public final class AmqTool {
    private AmqTool() {}

    public static void main(String[] args) throws Exception {
        if (args.length == 0) {
            usage();
        }
        Map<String, String> o = new HashMap<>();
        for (int i = 1; i < args.length; i++) {
            if (!args[i].startsWith("--") || i + 1 >= args.length) {
                usage();
            }
            o.put(args[i].substring(2), args[++i]);
        }
        int rc;
        switch (args[0]) {
            case "produce":
                rc = produce(o);
                break;
            case "consume":
                rc = consume(o);
                break;
            case "xa-recover":
                rc = xaRecover(o);
                break;
            default:
                usage();
                return;
        }
        System.exit(rc);
    }

    private static void usage() {
        System.err.println("usage: AmqTool produce|consume --url URL --queue Q [options]; see the class comment");
        System.exit(2);
    }

    private static String need(Map<String, String> o, String k) {
        String v = o.get(k);
        if (v == null) {
            System.err.println("missing --" + k);
            System.exit(2);
        }
        return v;
    }

    static byte[] body(long idx, int size) {
        byte[] b = new byte[Math.max(size, 8)];
        for (int i = 0; i < 8; i++) {
            b[i] = (byte) (idx >>> (56 - 8 * i));
        }
        for (int i = 8; i < b.length; i++) {
            b[i] = (byte) (idx * 31 + i);
        }
        return b;
    }

    private static int produce(Map<String, String> o) throws Exception {
        String url = need(o, "url");
        String queue = need(o, "queue");
        long count = Long.parseLong(need(o, "count"));
        long start = Long.parseLong(o.getOrDefault("start", "0"));
        int size = Integer.parseInt(o.getOrDefault("size", "1024"));
        int producers = Integer.parseInt(o.getOrDefault("producers", "1"));
        String ackedPath = o.get("acked");
        String mode = o.getOrDefault("mode", "plain");
        if (!java.util.Arrays.asList("plain", "tx", "xa", "xa-prepare").contains(mode)) {
            System.err.println("--mode must be plain, tx, xa or xa-prepare, not " + mode);
            System.exit(2);
        }
        boolean xa = mode.startsWith("xa");
        int batch = Integer.parseInt(o.getOrDefault("batch", "plain".equals(mode) ? "1" : "4"));
        String preparedPath = o.get("prepared");
        List<String> prepared = new ArrayList<>();
        String run = Long.toHexString(System.nanoTime());
        AtomicLong next = new AtomicLong(start);
        long end = start + count;
        AtomicBoolean stop = new AtomicBoolean();
        List<Long> acked = new ArrayList<>();
        AtomicLong failed = new AtomicLong();
        List<Thread> threads = new ArrayList<>();
        long t0 = System.nanoTime();
        for (int p = 0; p < producers; p++) {
            Thread t = new Thread(() -> {
                Connection c = null;
                try {
                    Session s;
                    XAResource xr = null;
                    if (xa) {
                        XAConnection xc = new ActiveMQXAConnectionFactory(url).createXAConnection();
                        c = xc;
                        c.start();
                        XASession xs = xc.createXASession();
                        xr = xs.getXAResource();
                        s = xs.getSession();
                    } else {
                        c = new ActiveMQConnectionFactory(url).createConnection();
                        c.start();
                        boolean tx = "tx".equals(mode);
                        s = c.createSession(tx, tx ? Session.SESSION_TRANSACTED : Session.AUTO_ACKNOWLEDGE);
                    }
                    Queue q = s.createQueue(queue);
                    MessageProducer mp = s.createProducer(q);
                    mp.setDeliveryMode(DeliveryMode.PERSISTENT);
                    while (!stop.get()) {
                        List<Long> idx = new ArrayList<>();
                        while (idx.size() < batch) {
                            long i = next.getAndIncrement();
                            if (i >= end) {
                                break;
                            }
                            idx.add(i);
                        }
                        if (idx.isEmpty()) {
                            break;
                        }
                        Xid xid = xa ? new Id(run + "-" + idx.get(0)) : null;
                        try {
                            if (xid != null) {
                                xr.start(xid, XAResource.TMNOFLAGS);
                            }
                            for (long i : idx) {
                                BytesMessage m = s.createBytesMessage();
                                m.writeBytes(body(i, size));
                                m.setLongProperty("idx", i);
                                mp.send(m);
                            }
                            if ("tx".equals(mode)) {
                                s.commit();
                            } else if (xid != null) {
                                xr.end(xid, XAResource.TMSUCCESS);
                                xr.prepare(xid);
                                if ("xa-prepare".equals(mode)) {
                                    StringBuilder line = new StringBuilder(new String(xid.getGlobalTransactionId(),
                                            StandardCharsets.UTF_8)).append(' ');
                                    for (int k = 0; k < idx.size(); k++) {
                                        line.append(k == 0 ? "" : ",").append(idx.get(k));
                                    }
                                    synchronized (prepared) {
                                        prepared.add(line.toString());
                                    }
                                    continue;
                                }
                                xr.commit(xid, false);
                            }
                        } catch (JMSException | XAException e) {
                            failed.incrementAndGet();
                            stop.set(true);
                            System.err.println("send of " + idx + " failed: " + e);
                            break;
                        }
                        synchronized (acked) {
                            acked.addAll(idx);
                        }
                    }
                } catch (JMSException | RuntimeException | Error e) {
                    failed.incrementAndGet();
                    stop.set(true);
                    System.err.println("producer failed: " + e);
                } finally {
                    if (c != null) {
                        try {
                            c.close();
                        } catch (JMSException ignored) {
                            // the broker may be gone
                        }
                    }
                }
            });
            threads.add(t);
            t.start();
        }
        for (Thread t : threads) {
            t.join();
        }
        double secs = (System.nanoTime() - t0) / 1e9;
        if (ackedPath != null) {
            try (PrintWriter w = new PrintWriter(new FileWriter(ackedPath, true))) {
                synchronized (acked) {
                    for (long i : acked) {
                        w.println(i);
                    }
                }
            }
        }
        if (preparedPath != null) {
            try (PrintWriter w = new PrintWriter(new FileWriter(preparedPath, true))) {
                synchronized (prepared) {
                    for (String l : prepared) {
                        w.println(l);
                    }
                }
            }
        }
        int n;
        synchronized (acked) {
            n = acked.size();
        }
        System.out.printf("sent=%d failed=%d seconds=%.3f msgs_per_s=%.1f%n", n, failed.get(), secs, n / secs);
        return failed.get() == 0 ? 0 : 3;
    }

    /** An XA transaction id: GTRID the given text, one branch. */
    static final class Id implements Xid {
        private final byte[] gtrid;

        Id(String gtrid) {
            this.gtrid = gtrid.getBytes(StandardCharsets.UTF_8);
        }

        @Override
        public int getFormatId() {
            return 0x4d4c;
        }

        @Override
        public byte[] getGlobalTransactionId() {
            return gtrid.clone();
        }

        @Override
        public byte[] getBranchQualifier() {
            return new byte[] {1};
        }
    }

    private static int xaRecover(Map<String, String> o) throws JMSException, IOException, XAException {
        String url = need(o, "url");
        String out = need(o, "out");
        boolean commit = Boolean.parseBoolean(o.getOrDefault("commit", "false"));
        XAConnection c = new ActiveMQXAConnectionFactory(url).createXAConnection();
        int n = 0;
        try (PrintWriter w = new PrintWriter(new FileWriter(out, false))) {
            c.start();
            XAResource r = c.createXASession().getXAResource();
            Xid[] ids = r.recover(XAResource.TMSTARTRSCAN | XAResource.TMENDRSCAN);
            for (Xid x : ids) {
                w.println(new String(x.getGlobalTransactionId(), StandardCharsets.UTF_8));
                n++;
                if (commit) {
                    r.commit(x, false);
                }
            }
        } finally {
            c.close();
        }
        System.out.printf("prepared=%d%n", n);
        return 0;
    }

    private static int consume(Map<String, String> o) throws JMSException, IOException {
        String url = need(o, "url");
        String queue = need(o, "queue");
        long idle = Long.parseLong(o.getOrDefault("idle-ms", "5000"));
        String out = need(o, "out");
        long received = 0;
        long corrupt = 0;
        Connection c = new ActiveMQConnectionFactory(url).createConnection();
        try (PrintWriter w = new PrintWriter(new FileWriter(out, false))) {
            c.start();
            Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer mc = s.createConsumer(s.createQueue(queue));
            while (true) {
                Message m = mc.receive(idle);
                if (m == null) {
                    break;
                }
                long idx = m.getLongProperty("idx");
                BytesMessage bm = (BytesMessage) m;
                byte[] got = new byte[(int) bm.getBodyLength()];
                bm.readBytes(got);
                if (!java.util.Arrays.equals(got, body(idx, got.length))) {
                    corrupt++;
                    System.err.println("message " + idx + ": body differs from what was sent");
                }
                w.println(idx);
                received++;
            }
        } finally {
            c.close();
        }
        System.out.printf("received=%d corrupt=%d%n", received, corrupt);
        return corrupt == 0 ? 0 : 3;
    }
}
