package messagehub.examples.subscriber;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.avro.generic.GenericData;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;

/**
 * Prints every event of messagehub's conversation.events topic as one JSON line.
 *
 * <p>Standard output carries the events, standard error the diagnostics and a closing count.
 * The exit status is 0 when every record decoded, 1 when some did not and 2 on bad options or
 * when the topic or the schemas cannot be found. Delivery is at least once, so a real
 * subscriber also skips events whose event_id it has already handled.
 */
public final class ConversationEventsSubscriber {

  static final String RECORD_NAME = "messagehub.events.ConversationEvent";
  private static final Duration POLL_TIMEOUT = Duration.ofMillis(500);
  private static final Duration METADATA_TIMEOUT = Duration.ofSeconds(30);

  private final Options options;
  private final EventDecoder decoder;
  private final PrintStream out;
  private long printed;
  private long undecodable;

  private ConversationEventsSubscriber(Options options, EventDecoder decoder, PrintStream out) {
    this.options = options;
    this.decoder = decoder;
    this.out = out;
  }

  public static void main(String[] args) {
    if (List.of(args).contains("--help")) {
      System.out.print(Options.USAGE);
      return;
    }

    Options options;
    EventDecoder decoder;
    try {
      options = Options.parse(args);
      decoder = EventDecoder.load(options.schemasDir(), RECORD_NAME);
    } catch (IllegalArgumentException | IOException e) {
      System.err.println("java-subscriber: " + e.getMessage());
      System.err.print(Options.USAGE);
      System.exit(2);
      return;
    }

    PrintStream out =
        new PrintStream(new FileOutputStream(FileDescriptor.out), false, StandardCharsets.UTF_8);
    ConversationEventsSubscriber subscriber =
        new ConversationEventsSubscriber(options, decoder, out);
    try {
      subscriber.run();
    } catch (KafkaException | IllegalStateException e) {
      System.err.println("java-subscriber: topic " + options.topic() + " at " + options.bootstrap()
          + ": " + e.getMessage());
      System.exit(2);
    }
    System.err.printf(
        "java-subscriber: %d events printed, %d undecodable%n",
        subscriber.printed, subscriber.undecodable);
    System.exit(subscriber.undecodable == 0 ? 0 : 1);
  }

  private void run() {
    try (KafkaConsumer<String, byte[]> consumer =
        new KafkaConsumer<>(options.consumerProperties())) {
      List<TopicPartition> partitions = partitionsOf(consumer);
      if (options.groupId() == null) {
        consumer.assign(partitions);
        consumer.seekToBeginning(partitions);
      } else {
        consumer.subscribe(List.of(options.topic()));
      }
      Map<TopicPartition, Long> endOffsets =
          options.untilEnd() ? consumer.endOffsets(partitions) : Map.of();
      consume(consumer, endOffsets);
    }
  }

  private void consume(KafkaConsumer<String, byte[]> consumer, Map<TopicPartition, Long> ends) {
    Instant lastRecordAt = Instant.now();
    while (true) {
      ConsumerRecords<String, byte[]> records = consumer.poll(POLL_TIMEOUT);
      Map<TopicPartition, OffsetAndMetadata> handled = new HashMap<>();
      for (ConsumerRecord<String, byte[]> record : records) {
        print(record);
        handled.put(new TopicPartition(record.topic(), record.partition()),
            new OffsetAndMetadata(record.offset() + 1));
        if (printed + undecodable >= options.maxEvents()) {
          break;
        }
      }
      out.flush();

      // Commit only printed records: a restart after a crash may print some again but skips none.
      if (options.groupId() != null && !handled.isEmpty()) {
        consumer.commitSync(handled);
      }
      if (!records.isEmpty()) {
        lastRecordAt = Instant.now();
      }
      if (shouldStop(consumer, ends, lastRecordAt)) {
        return;
      }
    }
  }

  private void print(ConsumerRecord<String, byte[]> record) {
    try {
      out.println(GenericData.get().toString(decoder.decode(record.value())));
      printed++;
    } catch (IOException e) {
      undecodable++;
      System.err.printf(
          "java-subscriber: partition %d offset %d key %s: cannot decode as %s: %s%n",
          record.partition(), record.offset(), record.key(), decoder.recordName(),
          e.getMessage());
    }
  }

  private boolean shouldStop(
      KafkaConsumer<String, byte[]> consumer, Map<TopicPartition, Long> ends, Instant lastRecordAt) {
    if (printed + undecodable >= options.maxEvents()) {
      return true;
    }
    if (options.idleTimeout() != null
        && Duration.between(lastRecordAt, Instant.now()).compareTo(options.idleTimeout()) >= 0) {
      return true;
    }
    return options.untilEnd() && reachedEnd(consumer, ends);
  }

  private static boolean reachedEnd(
      KafkaConsumer<String, byte[]> consumer, Map<TopicPartition, Long> ends) {
    for (Map.Entry<TopicPartition, Long> end : ends.entrySet()) {
      // In a group, a partition not assigned yet has no position.
      if (!consumer.assignment().contains(end.getKey())) {
        return false;
      }
      if (consumer.position(end.getKey()) < end.getValue()) {
        return false;
      }
    }
    return true;
  }

  private List<TopicPartition> partitionsOf(KafkaConsumer<String, byte[]> consumer) {
    List<PartitionInfo> infos = consumer.partitionsFor(options.topic(), METADATA_TIMEOUT);
    if (infos == null || infos.isEmpty()) {
      throw new IllegalStateException(
          "topic not found: start messagehub (`messagehub up`) or pass --topic and --bootstrap");
    }
    return infos.stream().map(info -> new TopicPartition(info.topic(), info.partition())).toList();
  }
}
