package io.mirrorlog.activemq6;

import java.io.File;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.store.PersistenceAdapter;
import org.apache.activemq.store.memory.MemoryPersistenceAdapter;

/**
 * An embedded ActiveMQ 6 broker on the mirrorlog adapter, for machines
 * without ActiveMQ 6's distribution (Maven Central does not serve it here)
 * and for the tests that kill brokers: tools/activemq6/start-broker.sh runs
 * it. Configured by system properties:
 * {@code activemq.name} (broker name, default "mirrorlog"),
 * {@code activemq.port} (OpenWire on 127.0.0.1, default 61616),
 * {@code activemq.host} (default 127.0.0.1),
 * {@code activemq.data} (the broker's own directory: temp spooling only),
 * {@code mirrorlog.endpoints}, {@code mirrorlog.journal},
 * {@code mirrorlog.durability}, {@code mirrorlog.appendsOnWire} (the adapter's properties), and
 * {@code activemq.store=kahadb} for stock KahaDB in the data directory
 * instead (the benchmark's baseline; the KahaDB jar must be on the class path),
 * or {@code activemq.store=memory} for ActiveMQ's in-heap store (no
 * durability at all: the benchmark's ceiling for any store on one machine).
 * Prints "broker NAME started" once it serves, and runs until killed.
 */
public final class Launcher {
    private Launcher() {}

    public static void main(String[] args) throws Exception {
        String name = System.getProperty("activemq.name", "mirrorlog");
        MirrorlogPersistenceAdapter a = new MirrorlogPersistenceAdapter();
        a.setEndpoints(System.getProperty("mirrorlog.endpoints", "127.0.0.1:7400"));
        a.setJournal(System.getProperty("mirrorlog.journal", "activemq"));
        a.setDurability(System.getProperty("mirrorlog.durability", "local"));
        a.setAppendsOnWire(Integer.getInteger("mirrorlog.appendsOnWire", 1));
        BrokerService b = new BrokerService();
        File data = new File(System.getProperty("activemq.data", "activemq-data"));
        PersistenceAdapter store = a;
        if ("kahadb".equals(System.getProperty("activemq.store"))) {
            store = (PersistenceAdapter) Class.forName("org.apache.activemq.store.kahadb.KahaDBPersistenceAdapter")
                    .getDeclaredConstructor().newInstance();
            store.setDirectory(new File(data, "kahadb"));
        } else if ("memory".equals(System.getProperty("activemq.store"))) {
            store = new MemoryPersistenceAdapter();
        }
        b.setBrokerName(name);
        b.setUseJmx(false);
        b.setPersistent(true);
        b.setSchedulerSupport(false);
        b.setDataDirectoryFile(data);
        b.setPersistenceAdapter(store);
        b.addConnector("tcp://" + System.getProperty("activemq.host", "127.0.0.1") + ":"
                + System.getProperty("activemq.port", "61616"));
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                b.stop();
            } catch (Exception e) {
                // exiting anyway
            }
        }));
        b.start();
        b.waitUntilStarted();
        System.out.println("broker " + name + " started, writer epoch " + a.getWriterEpoch() + ", store " + store);
        System.out.flush();
        b.waitUntilStopped();
        System.out.println("broker " + name + " stopped");
    }
}
