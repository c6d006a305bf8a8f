import MartCore
import Synchronization

/// Delivers events between services in one process, with the semantics of one-partition Kafka
/// topics: an append-only log per topic, a committed offset per consumer group, redelivery of
/// what a group fetched but did not commit when it subscribes again.
///
/// Used by `mart dev` / `make run` when no `KAFKA_BROKERS` is configured. The outbox still keeps
/// every event until the transport has it, and the inbox still makes each effect single; what
/// this transport holds in memory is lost if the process dies, which a broker would keep.
public final class InProcessEventTransport: EventTransport {
  private struct TopicLog {
    var baseOffset: Int64 = 0
    var records: [ReceivedRecord] = []
    var endOffset: Int64 { baseOffset + Int64(records.count) }
  }

  private struct Group {
    var committed: [String: Int64] = [:]
    var fetched: [String: Int64] = [:]
  }

  private struct State {
    var logs: [String: TopicLog] = [:]
    var groups: [String: Group] = [:]
  }

  private let state = Mutex(State())
  /// Broadcast after every publish: subscribers waiting for records look again.
  private let published = AsyncCondition()

  public init() {}

  public func prepareTopics(_ names: [String]) async throws {}

  public func publish(_ records: [OutgoingRecord]) async -> [Result<Void, any Error>] {
    state.withLock { state in
      for record in records {
        var log = state.logs[record.topic] ?? TopicLog()
        log.records.append(
          ReceivedRecord(
            topic: record.topic, partition: 0, offset: log.endOffset, key: record.key, value: record.value,
            headers: record.headers))
        state.logs[record.topic] = log
      }
    }
    published.broadcast()
    return records.map { _ in .success(()) }
  }

  public func subscribe(group: String, topics: [String]) async throws -> any EventSubscription {
    state.withLock { state in
      // A (re)joining member starts from what the group committed, like a Kafka rebalance.
      var member = state.groups[group] ?? Group()
      for topic in topics {
        member.fetched[topic] = member.committed[topic] ?? state.logs[topic]?.baseOffset ?? 0
      }
      state.groups[group] = member
    }
    return Subscription(transport: self, group: group, topics: topics)
  }

  /// Takes the next unfetched record of the group, if there is one.
  fileprivate func take(group: String, topics: [String]) -> ReceivedRecord? {
    state.withLock { state in
      guard var member = state.groups[group] else { return nil }
      for topic in topics {
        guard let log = state.logs[topic] else { continue }
        let position = max(member.fetched[topic] ?? log.baseOffset, log.baseOffset)
        if position < log.endOffset {
          member.fetched[topic] = position + 1
          state.groups[group] = member
          var record = log.records[Int(position - log.baseOffset)]
          record.lag = log.endOffset - position - 1
          return record
        }
      }
      return nil
    }
  }

  /// Suspends until the group has something unfetched on one of `topics` (or the task is cancelled).
  fileprivate func waitForRecords(group: String, topics: [String]) async {
    await published.wait {
      state.withLock { state in
        guard let member = state.groups[group] else { return false }
        return topics.contains { topic in
          guard let log = state.logs[topic] else { return false }
          return (member.fetched[topic] ?? log.baseOffset) < log.endOffset
        }
      }
    }
  }

  fileprivate func commit(group: String, record: ReceivedRecord) {
    state.withLock { state in
      state.groups[group, default: Group()].committed[record.topic] = record.offset + 1
      // Forget what every group has committed: memory stays bounded by the slowest group.
      guard var log = state.logs[record.topic] else { return }
      let floor =
        state.groups.values.compactMap { group in
          group.fetched[record.topic] == nil ? nil : (group.committed[record.topic] ?? 0)
        }.min() ?? 0
      let newBase = min(floor, log.endOffset)
      if newBase > log.baseOffset {
        log.records.removeFirst(Int(newBase - log.baseOffset))
        log.baseOffset = newBase
        state.logs[record.topic] = log
      }
    }
  }

  private final class Subscription: EventSubscription {
    let transport: InProcessEventTransport
    let group: String
    let topics: [String]
    let closed = Atomic<Bool>(false)

    init(transport: InProcessEventTransport, group: String, topics: [String]) {
      self.transport = transport
      self.group = group
      self.topics = topics
    }

    func next() async throws -> ReceivedRecord? {
      while !closed.load(ordering: .acquiring) {
        try Task.checkCancellation()
        if let record = transport.take(group: group, topics: topics) { return record }
        await transport.waitForRecords(group: group, topics: topics)
      }
      return nil
    }

    func commit(_ record: ReceivedRecord) async throws {
      transport.commit(group: group, record: record)
    }

    func close() async {
      closed.store(true, ordering: .releasing)
    }
  }
}
