package io.mirrorlog.activemq6;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTopic;
import org.junit.Test;

/** The hot records are sized exactly, and decode to what was encoded, for any name. */
public class CodecTest {
    private static final String[] NAMES = {"q", "orders.eu", "nul\0in", "é-accent", "\u20ac-euro", "\uD83D\uDE00-pair", ""};

    @Test
    public void utfBytesIsWhatWriteUtfWrites() throws Exception {
        for (String s : NAMES) {
            ByteArrayOutputStream b = new ByteArrayOutputStream();
            new DataOutputStream(b).writeUTF(s);
            assertEquals(s, b.size(), Codec.utfBytes(s));
        }
    }

    @Test
    public void addAndRemoveRoundTripForEveryName() throws Exception {
        byte[] body = new byte[1500];
        for (int i = 0; i < body.length; i++) {
            body[i] = (byte) (i * 31);
        }
        for (String name : NAMES) {
            if (name.isEmpty()) {
                continue; // not a destination name
            }
            ActiveMQQueue q = new ActiveMQQueue(name);
            String id = "ID:" + name + ":1:1:1:7";
            Codec.Rec add = Codec.decode(Codec.add(q, id, 4, 1500, 12, body, 100, 1000));
            assertEquals(Codec.ADD, add.type);
            assertEquals(q, add.dest);
            assertEquals(id, add.messageId);
            assertEquals(4, add.priority);
            assertEquals(1500, add.size);
            assertEquals(12, add.wireVersion);
            assertArrayEquals(java.util.Arrays.copyOfRange(body, 100, 1100), add.body);
            Codec.Rec rm = Codec.decode(Codec.remove(q, id));
            assertEquals(Codec.REMOVE, rm.type);
            assertEquals(q, rm.dest);
            assertEquals(id, rm.messageId);
        }
    }

    /** An unsized record outgrows its first buffer: the writes past it grow the buffer and keep every byte. */
    @Test
    public void unsizedRecordsGrowPastTheirFirstBuffer() throws Exception {
        byte[] info = new byte[300];
        for (int i = 0; i < info.length; i++) {
            info[i] = (byte) (i * 7 + 1);
        }
        ActiveMQTopic t = new ActiveMQTopic("topic.with.a.name.longer.than.sixty.four.bytes.to.cross.the.first.buffer");
        Codec.Rec sub = Codec.decode(Codec.subAdd(t, "client-\u00e9\u4e2d", "sub", true, 12, info));
        assertEquals(Codec.SUB_ADD, sub.type);
        assertEquals(t, sub.dest);
        assertEquals("client-\u00e9\u4e2d", sub.clientId);
        assertEquals("sub", sub.subName);
        assertEquals(true, sub.retroactive);
        assertEquals(12, sub.wireVersion);
        assertArrayEquals(info, sub.body);
    }
}
