package io.mirrorlog.activemq6;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;

import jakarta.jms.BytesMessage;
import jakarta.jms.Connection;
import jakarta.jms.DeliveryMode;
import jakarta.jms.MessageConsumer;
import jakarta.jms.MessageProducer;
import jakarta.jms.Queue;
import jakarta.jms.Session;
import jakarta.jms.XAConnection;
import jakarta.jms.XASession;
import javax.transaction.xa.XAResource;
import javax.transaction.xa.Xid;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.ActiveMQXAConnectionFactory;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.command.ActiveMQBytesMessage;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.Message;
import org.apache.activemq.command.XATransactionId;
import org.apache.activemq.command.ActiveMQTextMessage;
import org.apache.activemq.store.MessageStore;
import org.junit.Test;

/**
 * A local transaction larger than one appliance batch (its records are
 * written ahead as STAGED records, then its COMMIT): it commits, its
 * messages come back in order across a restart, and staged records with
 * no COMMIT are dropped at replay.
 */
public class LargeTransactionTest {
    private static final int MESSAGES = 1500; // about 1.7 MB: over the appliance's 1 MiB batch

    private static BrokerService broker(String journal, boolean delete) throws Exception {
        BrokerService b = new BrokerService();
        b.setBrokerName("large-tx");
        b.setUseJmx(false);
        b.setPersistent(true);
        MirrorlogPersistenceAdapter a = Mirrorlog.adapter(journal);
        if (delete) {
            a.deleteAllMessages();
        }
        b.setPersistenceAdapter(a);
        b.setDataDirectory("target/activemq-data/large-tx");
        b.start();
        b.waitUntilStarted();
        return b;
    }

    private static byte[] body(int i) {
        byte[] b = new byte[1024];
        ByteBuffer.wrap(b).putInt(i);
        for (int k = 4; k < b.length; k++) {
            b[k] = (byte) (i * 31 + k);
        }
        return b;
    }

    @Test
    public void aTransactionLargerThanOneBatchCommitsAndSurvivesARestart() throws Exception {
        String journal = "large-tx-" + System.nanoTime();
        BrokerService b = broker(journal, true);
        try {
            Connection c = new ActiveMQConnectionFactory("vm://large-tx?create=false").createConnection();
            c.start();
            Session s = c.createSession(true, Session.SESSION_TRANSACTED);
            Queue q = s.createQueue("large");
            MessageProducer p = s.createProducer(q);
            p.setDeliveryMode(DeliveryMode.PERSISTENT);
            for (int i = 0; i < MESSAGES; i++) {
                BytesMessage m = s.createBytesMessage();
                m.writeBytes(body(i));
                p.send(m);
            }
            s.commit();
            c.close();
            // Before the restart: every body read back from the journal at
            // the LSN the commit gave its entry (STAGED records), in order.
            MessageStore store = b.getPersistenceAdapter().createQueueMessageStore(new ActiveMQQueue("large"));
            List<byte[]> bodies = new ArrayList<>();
            for (Message m : Mirrorlog.recovered(store)) {
                ActiveMQBytesMessage bm = (ActiveMQBytesMessage) m.copy();
                bm.setReadOnlyBody(true);
                byte[] got = new byte[(int) bm.getBodyLength()];
                bm.readBytes(got);
                bodies.add(got);
            }
            assertEquals(MESSAGES, bodies.size());
            for (int i = 0; i < MESSAGES; i++) {
                assertArrayEquals("message " + i + " read back before the restart", body(i), bodies.get(i));
            }
        } finally {
            b.stop();
            b.waitUntilStopped();
        }
        consumeAfterARestart(journal, "large", MESSAGES);
    }

    /**
     * Starts a broker on {@code journal} and consumes messages 0 to
     * {@code count - 1} of {@code queue}, in order and intact, and nothing more.
     */
    private static void consumeAfterARestart(String journal, String queue, int count) throws Exception {
        BrokerService b = broker(journal, false);
        try {
            Connection c = new ActiveMQConnectionFactory("vm://large-tx?create=false").createConnection();
            c.start();
            Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer mc = s.createConsumer(s.createQueue(queue));
            for (int i = 0; i < count; i++) {
                BytesMessage m = (BytesMessage) mc.receive(10_000);
                assertNotNull("message " + i + " after the restart", m);
                byte[] got = new byte[(int) m.getBodyLength()];
                m.readBytes(got);
                assertArrayEquals("message " + i + " in order, intact", body(i), got);
            }
            assertNull(mc.receive(500));
            c.close();
        } finally {
            b.stop();
            b.waitUntilStopped();
        }
    }

    /** A transaction branch id for the XA test. */
    private static Xid xid(int n) {
        return new Xid() {
            @Override
            public int getFormatId() {
                return 0x6d6c;
            }

            @Override
            public byte[] getGlobalTransactionId() {
                return new byte[] {'g', (byte) n};
            }

            @Override
            public byte[] getBranchQualifier() {
                return new byte[] {'b', (byte) n};
            }
        };
    }

    /** Sends {@code count} messages from {@code from} on {@code queue} in the XA branch {@code x}, then prepares it. */
    private static void sendAndPrepare(XASession s, Xid x, String queue, int from, int count) throws Exception {
        XAResource r = s.getXAResource();
        r.start(x, XAResource.TMNOFLAGS);
        MessageProducer p = s.createProducer(s.createQueue(queue));
        p.setDeliveryMode(DeliveryMode.PERSISTENT);
        for (int i = from; i < from + count; i++) {
            BytesMessage m = s.createBytesMessage();
            m.writeBytes(body(i));
            p.send(m);
        }
        r.end(x, XAResource.TMSUCCESS);
        assertEquals(XAResource.XA_OK, r.prepare(x));
    }

    /**
     * XA transactions larger than one batch: a prepare (its operations with
     * the bodies) and a commit (which writes them again) are each written
     * ahead as STAGED records made to count by one COMMIT of their staging
     * key. One branch is prepared and committed while the broker runs, one
     * is prepared and comes back prepared after a restart, then commits:
     * every message of both is consumed once, in order, intact.
     */
    @Test
    public void anXaTransactionLargerThanOneBatchPreparesAndCommitsAcrossARestart() throws Exception {
        String journal = "large-xa-" + System.nanoTime();
        int n = 1100; // about 1.2 MB each way: over the appliance's 1 MiB batch
        BrokerService b = broker(journal, true);
        try {
            XAConnection c = new ActiveMQXAConnectionFactory("vm://large-tx?create=false").createXAConnection();
            c.start();
            XASession s = c.createXASession();
            sendAndPrepare(s, xid(1), "large-xa", 0, n);
            s.getXAResource().commit(xid(1), false);
            sendAndPrepare(s, xid(2), "large-xa", n, n);
            c.close();
        } finally {
            b.stop();
            b.waitUntilStopped();
        }
        b = broker(journal, false);
        try {
            XAConnection c = new ActiveMQXAConnectionFactory("vm://large-tx?create=false").createXAConnection();
            c.start();
            XASession s = c.createXASession();
            XAResource r = s.getXAResource();
            Xid[] prepared = r.recover(XAResource.TMSTARTRSCAN | XAResource.TMENDRSCAN);
            assertEquals("the second branch came back prepared", 1, prepared.length);
            assertArrayEquals(xid(2).getGlobalTransactionId(), prepared[0].getGlobalTransactionId());
            r.commit(prepared[0], false);
            c.close();
        } finally {
            b.stop();
            b.waitUntilStopped();
        }
        consumeAfterARestart(journal, "large-xa", 2 * n);
    }

    @Test
    public void stagedRecordsWithoutTheirCommitAreDroppedAtReplay() throws Exception {
        String journal = "large-tx-replay-" + System.nanoTime();
        ActiveMQQueue dest = new ActiveMQQueue("staged");
        // Nothing pins these hand-written records: the mark must stay (no reclaimer).
        MirrorlogPersistenceAdapter a = Mirrorlog.started(journal, "staged");
        ActiveMQTextMessage lost = Mirrorlog.message("ID:staged-1:1:1:1", 1, dest);
        ActiveMQTextMessage kept = Mirrorlog.message("ID:staged-1:1:1:1", 2, dest);
        byte[] k1 = {1, 2, 3};
        byte[] k2 = {4, 5, 6};
        // Two staged XA prepares, each of a PREPARE and one prepared add:
        // only the second's staging key gets its COMMIT.
        byte[] k3 = {7, 8, 9};
        byte[] k4 = {10, 11, 12};
        try {
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.staged(k1, a.encodeAdd(dest, lost)))));
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.staged(k2, a.encodeAdd(dest, kept)))));
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.outcome(Codec.COMMIT, k2))));
            for (int n : new int[] {3, 4}) {
                byte[] key = n == 3 ? k3 : k4;
                byte[] x = a.marshal(new XATransactionId(xid(n)));
                ActiveMQTextMessage m = Mirrorlog.message("ID:staged-xa:1:1:1", n, dest);
                MirrorlogPersistenceAdapter.await(a.link().append(List.of(
                        Codec.staged(key, Codec.outcome(Codec.PREPARE, x)),
                        Codec.staged(key, Codec.prepared(x, a.encodeAdd(dest, m))))));
            }
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.outcome(Codec.COMMIT, k4))));
        } finally {
            a.stop();
        }
        a = Mirrorlog.started(journal, "staged");
        try {
            synchronized (a.lock) {
                assertEquals("only the prepare whose staging key was committed", 1, a.prepared.size());
                MirrorlogPersistenceAdapter.Prepared p = a.prepared.values().iterator().next();
                assertArrayEquals(xid(4).getGlobalTransactionId(), p.xid.getGlobalTransactionId());
                assertEquals("its prepared add", 1, p.ops.size());
            }
            MessageStore store = a.createQueueMessageStore(dest);
            assertEquals("only the committed one", 1, store.getMessageCount());
            assertNull(store.getMessage(lost.getMessageId()));
            ActiveMQTextMessage got = (ActiveMQTextMessage) store.getMessage(kept.getMessageId());
            assertNotNull(got);
            assertEquals("body 2", got.getText());
        } finally {
            a.stop();
        }
    }
}
