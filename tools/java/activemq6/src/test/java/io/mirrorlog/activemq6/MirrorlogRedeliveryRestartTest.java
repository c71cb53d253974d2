package io.mirrorlog.activemq6;

import java.util.Arrays;
import org.apache.activemq.TestSupport;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.RedeliveryRestartTest;
import org.junit.runners.Parameterized;

/**
 * ActiveMQ's RedeliveryRestartTest: with persistJMSRedelivered, a message's
 * redelivered flag (written by updateMessage before dispatch) survives a
 * restart.
 */
public class MirrorlogRedeliveryRestartTest extends RedeliveryRestartTest {
    @Parameterized.Parameters(name = "mirrorlog")
    public static Iterable<Object[]> data() {
        // The choice is ActiveMQ's; configureBroker mounts the adapter instead.
        return Arrays.asList(new Object[][] {{TestSupport.PersistenceAdapterChoice.MEM}});
    }

    @Override
    protected void configureBroker(BrokerService broker) throws Exception {
        super.configureBroker(broker);
        broker.setPersistenceAdapter(Mirrorlog.adapter("redelivery-restart"));
    }
}
