package io.mirrorlog.activemq6;

import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;

import java.util.concurrent.TimeUnit;
import org.apache.activemq.broker.ConnectionContext;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTextMessage;
import org.apache.activemq.store.ListenableFuture;
import org.apache.activemq.store.MessageStore;
import org.junit.Test;

/**
 * Reclaim never moves the mark past a live record, not even in the moment
 * between the appliance answering the record (the link's acknowledged end
 * moves past it) and the index learning its LSN. The link holds the add
 * until the test holds the adapter's lock; then the reader thread that
 * would give the entry its LSN waits on that lock, and the test looks at
 * what reclaim would do inside the moment: deterministic, no race to win.
 */
public class ReclaimTest {
    @Test(timeout = 60_000)
    public void theMarkStaysBelowARecordAnsweredBeforeTheIndexLearntItsLsn() throws Exception {
        String journal = "reclaim-" + System.nanoTime();
        ActiveMQQueue dest = new ActiveMQQueue("reclaim");
        ActiveMQTextMessage m = Mirrorlog.message("ID:reclaim-1:1:1:1", 1, dest);
        MirrorlogPersistenceAdapter a = Mirrorlog.started(journal, "reclaim");
        try {
            MessageStore store = a.createQueueMessageStore(dest);
            Link l = a.link();
            l.hold(true); // the add waits in the link until released below
            long before = l.ackedEnd(); // the record's LSN is at least this
            ListenableFuture<Object> f = store.asyncAddQueueMessage(new ConnectionContext(), m);
            synchronized (a.lock) {
                l.hold(false);
                while (l.ackedEnd() <= before) {
                    Thread.onSpinWait(); // until the appliance's answer arrived
                }
                Entry e = a.store(dest).byId.get(m.getMessageId());
                assertTrue("inside the moment: answered, LSN not yet known to the index", e.lsn < 0);
                long needed = a.needed(l);
                assertTrue("the mark may move to " + needed + ", past the record at or above " + before,
                        needed <= before);
            }
            f.get(10, TimeUnit.SECONDS);
            a.reclaim();
        } finally {
            a.stop();
        }
        a = Mirrorlog.started(journal, "reclaim");
        try {
            assertNotNull("the message after a reclaim and a restart",
                    a.createQueueMessageStore(dest).getMessage(m.getMessageId()));
        } finally {
            a.stop();
        }
    }
}
