package io.mirrorlog.client;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.lang.reflect.Field;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * Checks {@link Wire} against tests/golden/protocol-v1.txt, which the Rust
 * side writes from its code table and encoders (tests/golden.rs runs this):
 * every {@code E_*}, {@code OP_*} and protocol constant, the fail-over codes,
 * every request frame the client builds (byte for byte) and every answer it
 * decodes. Exits non-zero with the first disagreement.
 */
public final class WireGolden {
    private static int checked;

    private WireGolden() {}

    public static void main(String[] args) throws Exception {
        List<String> lines = Files.readAllLines(Paths.get(args[0]), StandardCharsets.UTF_8);
        Map<String, Integer> codes = new HashMap<>();
        Map<String, Integer> ops = new HashMap<>();
        Map<String, Integer> consts = new HashMap<>();
        Set<Integer> failover = new HashSet<>();
        for (String line : lines) {
            if (line.startsWith("#") || line.isEmpty()) {
                continue;
            }
            String[] t = line.split(" ");
            switch (t[0]) {
                case "code":
                    codes.put(t[2], Integer.parseInt(t[1]));
                    break;
                case "op":
                    ops.put(t[1], Integer.parseInt(t[2]));
                    break;
                case "const":
                    consts.put(t[1], Integer.parseInt(t[2]));
                    break;
                case "failover":
                    for (int i = 1; i < t.length; i++) {
                        failover.add(Integer.parseInt(t[i]));
                    }
                    break;
                case "request":
                    request(t);
                    break;
                case "answer":
                    answer(t);
                    break;
                default:
                    throw new AssertionError("unknown golden line: " + line);
            }
        }
        for (Field f : Wire.class.getDeclaredFields()) {
            if (!Modifier.isStatic(f.getModifiers()) || f.getType() != int.class) {
                continue;
            }
            f.setAccessible(true);
            int v = f.getInt(null);
            String n = f.getName();
            if (n.startsWith("E_")) {
                expect(codes.get(kebab(n.substring(2))), v, "error code " + n);
            } else if (n.startsWith("OP_")) {
                expect(ops.get(kebab(n.substring(3))), v, "opcode " + n);
            } else if (consts.containsKey(n)) {
                expect(consts.get(n), v, "constant " + n);
            }
        }
        for (String c : new String[] {"MAGIC", "VERSION", "HEADER", "RESPONSE", "RESEND"}) {
            if (!consts.containsKey(c)) {
                throw new AssertionError("the golden file lacks constant " + c);
            }
        }
        for (int code : codes.values()) {
            expect(failover.contains(code), Wire.failsOver(code), "failsOver(" + code + ")");
        }
        System.out.println("golden: ok (" + checked + " checks)");
    }

    private static String kebab(String constName) {
        return constName.toLowerCase().replace('_', '-');
    }

    private static Map<String, String> fields(String[] t) {
        Map<String, String> m = new HashMap<>();
        for (int i = 2; i < t.length - 1; i++) {
            int eq = t[i].indexOf('=');
            m.put(t[i].substring(0, eq), t[i].substring(eq + 1));
        }
        return m;
    }

    private static void request(String[] t) {
        Map<String, String> f = fields(t);
        long rid = Long.parseLong(f.get("rid"));
        byte[] want = unhex(t[t.length - 1]);
        byte[] have;
        String j = f.get("journal");
        switch (t[1]) {
            case "hello":
                have = Wire.hello(f.get("client")).frame(Wire.OP_HELLO, rid);
                break;
            case "append": {
                byte[] data = unhex(f.get("data"));
                have = Wire.append(j, Integer.parseInt(f.get("durability")), Long.parseUnsignedLong(f.get("producer")),
                        Long.parseLong(f.get("seq")), data, 0, data.length).frame(Wire.OP_APPEND, rid);
                if (f.get("resend").equals("1")) {
                    Wire.markResend(have, Wire.appendResendAt(j));
                }
                break;
            }
            case "append-as": {
                java.util.List<byte[]> recs = new java.util.ArrayList<>();
                for (String d : f.get("data").split(",", -1)) {
                    recs.add(unhex(d));
                }
                have = Wire.appendMany(j, Integer.parseInt(f.get("durability")), Long.parseLong(f.get("writer")),
                        Long.parseUnsignedLong(f.get("producer")), Long.parseLong(f.get("seq")), recs)
                        .frame(Wire.OP_APPEND, rid);
                break;
            }
            case "claim":
                have = Wire.claim(j, Integer.parseInt(f.get("durability")), unhex(f.get("data")))
                        .frame(Wire.OP_CLAIM, rid);
                break;
            case "set-mark-as":
                have = Wire.setMarkAs(j, Long.parseLong(f.get("lsn")), Long.parseLong(f.get("writer")))
                        .frame(Wire.OP_SET_MARK, rid);
                break;
            case "read":
                have = Wire.readRecords(j, Long.parseLong(f.get("from")), Integer.parseInt(f.get("max_count")),
                        Integer.parseInt(f.get("max_bytes"))).frame(Wire.OP_READ, rid);
                break;
            case "get-mark":
                have = Wire.journal(j).frame(Wire.OP_GET_MARK, rid);
                break;
            case "set-mark":
                have = Wire.setMark(j, Long.parseLong(f.get("lsn"))).frame(Wire.OP_SET_MARK, rid);
                break;
            case "create-journal":
                have = Wire.journal(j).frame(Wire.OP_CREATE_JOURNAL, rid);
                break;
            default:
                throw new AssertionError("no Java builder for request " + t[1]);
        }
        if (!Arrays.equals(want, have)) {
            throw new AssertionError("request " + t[1] + " (rid " + rid + "): Java builds\n  " + hex(have)
                    + "\nthe Rust encoder\n  " + hex(want));
        }
        checked++;
    }

    private static void answer(String[] t) throws IOException {
        Map<String, String> f = fields(t);
        long rid = Long.parseLong(f.get("rid"));
        Wire.Frame fr = Wire.read(new ByteArrayInputStream(unhex(t[t.length - 1])));
        expect(rid, fr.rid, "answer " + t[1] + " request id");
        switch (t[1]) {
            case "hello": {
                expect(Wire.OP_HELLO | Wire.RESPONSE, fr.opcode, "hello opcode");
                Wire.HelloAnswer h = new Wire.HelloAnswer(fr.body);
                expect(Integer.parseInt(f.get("version")), h.version, "hello version");
                expect(f.get("server"), h.server, "hello server");
                expect(Long.parseLong(f.get("epoch")), h.epoch, "hello epoch");
                expect(f.get("primary").equals("1"), h.primary, "hello primary");
                break;
            }
            case "append":
                expect(Wire.OP_APPEND | Wire.RESPONSE, fr.opcode, "append opcode");
                expect(Long.parseLong(f.get("first_lsn")), Wire.appendedLsn(fr.body), "appended lsn");
                break;
            case "read": {
                expect(Wire.OP_READ | Wire.RESPONSE, fr.opcode, "read opcode");
                String[] recs = f.get("records").split(",");
                Wire.RecordsAnswer r = new Wire.RecordsAnswer(fr.body, recs.length);
                expect(recs.length, r.lsns.length, "record count");
                for (int i = 0; i < recs.length; i++) {
                    String[] p = recs[i].split(":", -1);
                    expect(Long.parseLong(p[0]), r.lsns[i], "record lsn");
                    expect(Long.parseLong(p[1]), r.epochs[i], "record epoch");
                    expect(hex(unhex(p[2])), hex(r.data.get(i)), "record payload");
                }
                expect(Long.parseLong(f.get("next_lsn")), r.nextLsn, "next lsn");
                break;
            }
            case "claim": {
                expect(Wire.OP_CLAIM | Wire.RESPONSE, fr.opcode, "claim opcode");
                long[] c = Wire.claimed(fr.body);
                expect(Long.parseLong(f.get("writer")), c[0], "claimed writer");
                expect(Long.parseLong(f.get("lsn")), c[1], "claimed lsn");
                break;
            }
            case "get-mark":
                expect(Wire.OP_GET_MARK | Wire.RESPONSE, fr.opcode, "get-mark opcode");
                expect(Long.parseLong(f.get("lsn")), Wire.mark(fr.body), "mark");
                break;
            case "create-journal":
                expect(Wire.OP_CREATE_JOURNAL | Wire.RESPONSE, fr.opcode, "create-journal opcode");
                expect(0, fr.body.length, "ok body");
                break;
            case "error": {
                expect(Wire.OP_ERROR, fr.opcode, "error opcode");
                MirrorlogException e = Wire.error(fr.body);
                expect(Integer.parseInt(f.get("code")), e.code(), "error code");
                expect(f.get("message"), e.detail(), "error message");
                break;
            }
            default:
                throw new AssertionError("no Java decoder for answer " + t[1]);
        }
        checked++;
    }

    private static void expect(Object want, Object have, String what) {
        if (want == null || !want.equals(have)) {
            throw new AssertionError(what + ": golden " + want + ", Java " + have);
        }
        checked++;
    }

    private static byte[] unhex(String s) {
        byte[] b = new byte[s.length() / 2];
        for (int i = 0; i < b.length; i++) {
            b[i] = (byte) Integer.parseInt(s.substring(2 * i, 2 * i + 2), 16);
        }
        return b;
    }

    private static String hex(byte[] b) {
        StringBuilder s = new StringBuilder();
        for (byte x : b) {
            s.append(String.format("%02x", x & 0xFF));
        }
        return s.toString();
    }
}
