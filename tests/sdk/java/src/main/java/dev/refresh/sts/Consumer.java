// A long-lived AWS SDK for Java v2 client: see ../../../../../../README.md.
package dev.refresh.sts;

import software.amazon.awssdk.services.sts.StsClient;

public final class Consumer {
    public static void main(String[] args) throws InterruptedException {
        double seconds = Double.parseDouble(args[0]);
        double interval = Double.parseDouble(args[1]);
        long deadline = System.nanoTime() + (long) (seconds * 1e9);
        try (StsClient sts = StsClient.create()) {
            while (System.nanoTime() < deadline) {
                String line;
                try {
                    String arn = sts.getCallerIdentity().arn();
                    line = "{\"ok\": true, \"arn\": " + quote(arn) + "}";
                } catch (RuntimeException e) {
                    line = "{\"ok\": false, \"error\": " + quote(e.toString()) + "}";
                }
                System.out.println(line);
                System.out.flush();
                Thread.sleep((long) (interval * 1000));
            }
        }
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
