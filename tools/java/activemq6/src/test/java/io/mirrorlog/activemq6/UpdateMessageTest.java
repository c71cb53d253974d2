package io.mirrorlog.activemq6;

import static org.junit.Assert.assertEquals;

import java.util.List;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTextMessage;
import org.apache.activemq.command.Message;
import org.apache.activemq.store.MessageStore;
import org.junit.Test;

/**
 * updateMessage (persistJMSRedelivered) writes the message again; the newest
 * copy is the one read back, and the message keeps its place in the queue
 * after the mark moved and the broker restarted (the first ADD, which gives
 * the place, is not reclaimed while the message lives).
 */
public class UpdateMessageTest {
    private static final ActiveMQQueue QUEUE = new ActiveMQQueue("updated");

    @Test
    public void anUpdatedMessageKeepsItsPlaceAndItsNewestCopyAcrossReclaimAndRestart() throws Exception {
        String journal = "update-" + System.nanoTime();
        MirrorlogPersistenceAdapter pa = started(journal);
        ConnectionContext ctx = new ConnectionContext();
        ActiveMQTextMessage m1 = message(1), m2 = message(2);
        try {
            MessageStore store = pa.createQueueMessageStore(QUEUE);
            store.start();
            store.addMessage(ctx, m1);
            store.addMessage(ctx, m2);
            m1.setRedeliveryCounter(1);
            store.updateMessage(m1);
            pa.reclaim(); // the mark moves as far as the index allows
        } finally {
            pa.stop();
        }
        MirrorlogPersistenceAdapter again = started(journal);
        try {
            MessageStore s = again.createQueueMessageStore(QUEUE);
            List<Message> got = Mirrorlog.recovered(s);
            assertEquals(2, got.size());
            assertEquals("the updated message is still first", m1.getMessageId(), got.get(0).getMessageId());
            assertEquals("its newest copy is read back", 1, got.get(0).getRedeliveryCounter());
            assertEquals(m2.getMessageId(), got.get(1).getMessageId());
            assertEquals(0, got.get(1).getRedeliveryCounter());
        } finally {
            again.stop();
        }
    }

    private static MirrorlogPersistenceAdapter started(String journal) throws Exception {
        return Mirrorlog.started(journal, "update"); // reclaim() is called by the test
    }

    private static ActiveMQTextMessage message(long seq) throws Exception {
        return Mirrorlog.message("ID:update-1:1:1:1", seq, QUEUE);
    }
}
