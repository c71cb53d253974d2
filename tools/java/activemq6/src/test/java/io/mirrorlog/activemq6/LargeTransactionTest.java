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
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.command.ActiveMQBytesMessage;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.Message;
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
        b = broker(journal, false);
        try {
            Connection c = new ActiveMQConnectionFactory("vm://large-tx?create=false").createConnection();
            c.start();
            Session s = c.createSession(false, Session.AUTO_ACKNOWLEDGE);
            MessageConsumer mc = s.createConsumer(s.createQueue("large"));
            for (int i = 0; i < MESSAGES; i++) {
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
        try {
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.staged(k1, a.encodeAdd(dest, lost)))));
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.staged(k2, a.encodeAdd(dest, kept)))));
            MirrorlogPersistenceAdapter.await(a.link().append(Link.one(Codec.outcome(Codec.COMMIT, k2))));
        } finally {
            a.stop();
        }
        a = Mirrorlog.started(journal, "staged");
        try {
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
