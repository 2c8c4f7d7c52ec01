package messagehub.examples.subscriber;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.stream.Stream;
import org.apache.avro.AvroRuntimeException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.SchemaStore;

/**
 * Decodes messagehub values with nothing but the .avsc files of its schemas/ folder.
 *
 * <p>A value is Avro's single-object encoding: the marker C3 01, the 8-byte little-endian
 * CRC-64-AVRO fingerprint of the writer's schema in Parsing Canonical Form, then the Avro binary
 * body. Every .avsc file, the current ones and those in schemas/released/, goes into a {@link
 * SchemaStore.Cache} that Avro looks the fingerprint up in. The body is then resolved to the
 * current schema of the record, so a value written with an older released version reads with
 * the fields added since at their defaults.
 */
final class EventDecoder {

  private final Schema readerSchema;
  private final BinaryMessageDecoder<GenericRecord> decoder;

  private EventDecoder(Schema readerSchema, SchemaStore schemaStore) {
    this.readerSchema = readerSchema;
    this.decoder = new BinaryMessageDecoder<>(GenericData.get(), readerSchema, schemaStore);
  }

  /** Loads every schema under {@code schemasDir}; reads values as {@code recordName}. */
  static EventDecoder load(Path schemasDir, String recordName) throws IOException {
    SchemaStore.Cache store = new SchemaStore.Cache();
    Schema readerSchema = null;
    for (Path file : schemaFiles(schemasDir)) {
      // One parser per file: the released versions define the same names again.
      Schema schema = new Schema.Parser().parse(file.toFile());
      store.addSchema(schema);
      boolean current = file.getParent().equals(schemasDir);
      if (current && schema.getFullName().equals(recordName)) {
        readerSchema = schema;
      }
    }

    if (readerSchema == null) {
      throw new IOException(
          "no schema of " + recordName + " in " + schemasDir
              + ": pass messagehub's schemas/ folder with --schemas");
    }
    return new EventDecoder(readerSchema, store);
  }

  /** Returns the full name of the record that values are read as. */
  String recordName() {
    return readerSchema.getFullName();
  }

  /** Decodes one Kafka value; throws IOException saying why it cannot be read. */
  GenericRecord decode(byte[] value) throws IOException {
    if (value == null || value.length == 0) {
      throw new IOException("the value is empty");
    }
    // Confluent's framing (magic byte 0, 4-byte schema id) needs the schema registry.
    if (value[0] == 0 && value.length >= 5) {
      int schemaId = ByteBuffer.wrap(value, 1, 4).getInt();
      throw new IOException(
          "the value uses Confluent's registry framing with schema id " + schemaId
              + "; this example reads the single-object encoding only");
    }

    try {
      return decoder.decode(value);
    } catch (AvroRuntimeException e) {
      throw new IOException(e.getMessage(), e);
    }
  }

  private static List<Path> schemaFiles(Path schemasDir) throws IOException {
    if (!Files.isDirectory(schemasDir)) {
      throw new IOException(
          "schema folder not found: " + schemasDir.toAbsolutePath()
              + ": pass messagehub's schemas/ folder with --schemas");
    }
    try (Stream<Path> paths = Files.walk(schemasDir, 2)) {
      return paths.filter(path -> path.toString().endsWith(".avsc")).sorted().toList();
    }
  }
}
