package io.mirrorlog.activemq6;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import jakarta.jms.Connection;
import jakarta.jms.DeliveryMode;
import jakarta.jms.JMSException;
import jakarta.jms.MessageConsumer;
import jakarta.jms.MessageProducer;
import jakarta.jms.Session;
import jakarta.jms.TextMessage;
import java.util.HashSet;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.activemq.ActiveMQConnectionFactory;
import org.apache.activemq.broker.BrokerService;
import org.junit.Test;

/**
 * Two brokers on one journal: the later one's start claims it, the earlier
 * one is fenced (its next store operation fails and it stops itself), and
 * every message the earlier one acknowledged is on the later one, once.
 */
public class FencingTest {
    private static BrokerService broker(String name, String journal) throws Exception {
        BrokerService b = new BrokerService();
        b.setBrokerName(name);
        b.setUseJmx(false);
        b.setPersistent(true);
        b.setPersistenceAdapter(Mirrorlog.adapter(journal));
        b.setDataDirectory("target/activemq-data/" + name);
        return b;
    }

    private static Connection connect(BrokerService b) throws JMSException {
        ActiveMQConnectionFactory f = new ActiveMQConnectionFactory("vm://" + b.getBrokerName() + "?create=false");
        f.setAlwaysSyncSend(true);
        Connection c = f.createConnection();
        c.start();
        return c;
    }

    @Test
    public void theEarlierBrokerIsFencedAndNothingItAcknowledgedIsLost() throws Exception {
        BrokerService b1 = broker("fence-one", "fencing");
        b1.setDeleteAllMessagesOnStartup(true);
        b1.start();
        b1.waitUntilStarted();
        Connection c1 = connect(b1);
        Session s1 = c1.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageProducer p1 = s1.createProducer(s1.createQueue("orders"));
        p1.setDeliveryMode(DeliveryMode.PERSISTENT);
        Set<String> sent = new HashSet<>();
        for (int i = 0; i < 200; i++) {
            String body = "before-" + i;
            p1.send(s1.createTextMessage(body));
            sent.add(body);
        }
        long w1 = ((MirrorlogPersistenceAdapter) b1.getPersistenceAdapter()).getWriterEpoch();

        // A second broker starts on the same journal (a failover that did not
        // know the first one still runs).
        BrokerService b2 = broker("fence-two", "fencing");
        b2.start();
        b2.waitUntilStarted();
        long w2 = ((MirrorlogPersistenceAdapter) b2.getPersistenceAdapter()).getWriterEpoch();
        assertTrue("the claim raised the writer epoch: " + w1 + " -> " + w2, w2 > w1);

        // The first broker's next persistent send fails, and it stops.
        try {
            p1.send(s1.createTextMessage("after the claim"));
            fail("a fenced broker took a persistent send");
        } catch (JMSException expected) {
            // the store answered writer-fenced
        }
        assertTrue("the fenced broker stopped", waitStopped(b1, 20_000));
        try {
            c1.close();
        } catch (JMSException ignored) {
            // its transport is gone with it
        }

        // Every send the first broker acknowledged is on the second, once.
        Connection c2 = connect(b2);
        Session s2 = c2.createSession(false, Session.AUTO_ACKNOWLEDGE);
        MessageConsumer consumer = s2.createConsumer(s2.createQueue("orders"));
        Set<String> got = new HashSet<>();
        for (int i = 0; i < sent.size(); i++) {
            TextMessage m = (TextMessage) consumer.receive(10_000);
            assertNotNull("message " + i + " of " + sent.size(), m);
            assertTrue("received twice: " + m.getText(), got.add(m.getText()));
        }
        assertNull("nothing more (and nothing sent after the claim)", consumer.receive(500));
        assertEquals(sent, got);
        c2.close();
        b2.stop();
        b2.waitUntilStopped();
    }

    private static boolean waitStopped(BrokerService b, long ms) throws InterruptedException {
        long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(ms);
        while (System.nanoTime() < end) {
            if (b.isStopped()) {
                return true;
            }
            Thread.sleep(50);
        }
        return b.isStopped();
    }
}
