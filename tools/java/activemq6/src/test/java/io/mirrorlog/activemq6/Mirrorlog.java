package io.mirrorlog.activemq6;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.activemq.command.ActiveMQDestination;
import org.apache.activemq.command.ActiveMQTextMessage;
import org.apache.activemq.command.Message;
import org.apache.activemq.command.MessageId;
import org.apache.activemq.store.MessageRecoveryListener;
import org.apache.activemq.store.MessageStore;

/** The adapter the tests mount: on the mirrorlogd that tools/activemq6/test.sh started. */
public final class Mirrorlog {
    private Mirrorlog() {}

    public static String endpoints() {
        String e = System.getProperty("mirrorlog.endpoints");
        return e == null || e.isEmpty() || e.startsWith("$") ? "127.0.0.1:7400" : e;
    }

    /** A property tools/activemq6/test.sh sets; a clear failure when run without it. */
    static String required(String name) {
        String v = System.getProperty(name);
        if (v == null || v.isEmpty() || v.startsWith("$")) {
            throw new IllegalStateException(name + " is not set: run the tests through tools/activemq6/test.sh");
        }
        return v;
    }

    /**
     * The mirrorlog-faultproxy in front of the appliance (started by
     * tools/activemq6/test.sh): {@code command} ("pause", "resume", …; see
     * tools/faultproxy/src/control.rs) sent to its control port, which
     * answers one line, "ok" or "err …".
     */
    static void faultProxy(String command) throws IOException {
        String[] hp = required("mirrorlog.faultproxyControl").split(":");
        try (Socket s = new Socket(hp[0], Integer.parseInt(hp[1]))) {
            s.getOutputStream().write((command + "\n").getBytes(StandardCharsets.UTF_8));
            String reply = new BufferedReader(new InputStreamReader(s.getInputStream(), StandardCharsets.UTF_8))
                    .readLine();
            if (reply == null || !reply.startsWith("ok")) {
                throw new IOException("faultproxy '" + command + "': " + reply);
            }
        }
    }

    /** An adapter on journal {@code journal} (one per test class: a restart finds its records). */
    public static MirrorlogPersistenceAdapter adapter(String journal) {
        MirrorlogPersistenceAdapter a = new MirrorlogPersistenceAdapter();
        a.setEndpoints(endpoints());
        a.setJournal(journal);
        a.setDurability("local");
        a.setReclaimIntervalMs(500);
        a.setRequestTimeoutMs(10_000);
        return a;
    }

    /** An adapter on {@code journal}, started; its mark moves only when a test calls reclaim(). */
    static MirrorlogPersistenceAdapter started(String journal, String broker) throws Exception {
        MirrorlogPersistenceAdapter a = adapter(journal);
        a.setBrokerName(broker);
        a.setReclaimIntervalMs(0);
        a.start();
        return a;
    }

    /** A persistent text message {@code producer}:{@code seq} to {@code dest}. */
    static ActiveMQTextMessage message(String producer, long seq, ActiveMQDestination dest) throws Exception {
        ActiveMQTextMessage m = new ActiveMQTextMessage();
        m.setMessageId(new MessageId(producer, seq));
        m.setDestination(dest);
        m.setPersistent(true);
        m.setText("body " + seq);
        return m;
    }

    /** Every message {@code store} recovers, in its order. */
    static List<Message> recovered(MessageStore store) throws Exception {
        List<Message> got = new ArrayList<>();
        store.recover(new MessageRecoveryListener() {
            @Override
            public boolean recoverMessage(Message m) {
                got.add(m);
                return true;
            }

            @Override
            public boolean recoverMessageReference(MessageId ref) {
                throw new AssertionError("the adapter recovers messages, not references");
            }

            @Override
            public boolean hasSpace() {
                return true;
            }

            @Override
            public boolean isDuplicate(MessageId id) {
                return false;
            }
        });
        return got;
    }
}
