package messagehub.examples.subscriber;

import java.nio.file.Path;
import java.time.Duration;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/** The command line of the subscriber, validated. */
record Options(
    String bootstrap,
    String topic,
    Path schemasDir,
    String groupId,
    boolean untilEnd,
    long maxEvents,
    Duration idleTimeout) {

  static final String USAGE =
      """
      usage: java -jar target/java-subscriber.jar [options]

      Prints each event of a messagehub topic as one JSON line on standard output.

        --bootstrap HOST:PORT  Kafka bootstrap servers (default 127.0.0.1:17092, the local stack)
        --topic NAME           topic to read (default conversation.events)
        --schemas DIR          messagehub's schemas/ folder with its .avsc files (default ../../schemas)
        --group ID             read as consumer group ID from its committed offsets and commit
                               after printing; without it, read every partition from the beginning
                               and commit nothing
        --until-end            stop at the end offsets the topic had at start
        --max-events N         stop after N events
        --idle-seconds S       stop after S seconds without a new record
        --help                 print this text
      """;

  /** Parses {@code args}; throws IllegalArgumentException with the reason on bad input. */
  static Options parse(String[] args) {
    String bootstrap = "127.0.0.1:17092";
    String topic = "conversation.events";
    Path schemasDir = Path.of("..", "..", "schemas");
    String groupId = null;
    boolean untilEnd = false;
    long maxEvents = Long.MAX_VALUE;
    Duration idleTimeout = null;

    for (int i = 0; i < args.length; i++) {
      String option = args[i];
      switch (option) {
        case "--until-end" -> untilEnd = true;
        case "--bootstrap" -> bootstrap = valueOf(args, ++i, option);
        case "--topic" -> topic = valueOf(args, ++i, option);
        case "--schemas" -> schemasDir = Path.of(valueOf(args, ++i, option));
        case "--group" -> groupId = valueOf(args, ++i, option);
        case "--max-events" -> maxEvents = positive(valueOf(args, ++i, option), option);
        case "--idle-seconds" ->
            idleTimeout = Duration.ofSeconds(positive(valueOf(args, ++i, option), option));
        default -> throw new IllegalArgumentException("unknown option: " + option);
      }
    }
    return new Options(bootstrap, topic, schemasDir, groupId, untilEnd, maxEvents, idleTimeout);
  }

  /** Returns the consumer configuration: values stay bytes, the Avro decoding is ours. */
  Properties consumerProperties() {
    Properties properties = new Properties();
    properties.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    properties.put(ConsumerConfig.CLIENT_ID_CONFIG, "messagehub-java-subscriber");
    properties.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    properties.put(
        ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    properties.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    // A new group starts at the oldest record the topic still holds.
    properties.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    if (groupId != null) {
      properties.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
    }
    return properties;
  }

  private static String valueOf(String[] args, int index, String option) {
    if (index >= args.length) {
      throw new IllegalArgumentException(option + " needs a value");
    }
    return args[index];
  }

  private static long positive(String value, String option) {
    try {
      long number = Long.parseLong(value);
      if (number > 0) {
        return number;
      }
    } catch (NumberFormatException e) {
      // Reported below with the option's name.
    }
    throw new IllegalArgumentException(option + " must be a positive whole number: " + value);
  }
}
