package io.mirrorlog.activemq6;

/** The adapter the tests mount: on the mirrorlogd that tools/activemq6/test.sh started. */
public final class Mirrorlog {
    private Mirrorlog() {}

    public static String endpoints() {
        String e = System.getProperty("mirrorlog.endpoints");
        return e == null || e.isEmpty() || e.startsWith("$") ? "127.0.0.1:7400" : e;
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
}
