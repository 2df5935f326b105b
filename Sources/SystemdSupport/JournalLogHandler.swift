import CSystemd
import Foundation
import Logging

/// A swift-log handler writing native journal entries (sd_journal_sendv(3)): `MESSAGE`, `PRIORITY`,
/// `SYSLOG_IDENTIFIER`, `CODE_FILE`/`CODE_LINE`/`CODE_FUNC`, every metadata key as a field (`bunq.context` becomes
/// `BUNQ_CONTEXT`), and a stable `MESSAGE_ID` for the events operators alert on.
public struct JournalLogHandler: LogHandler {
    /// The events with a stable MESSAGE_ID (`journalctl MESSAGE_ID=...`), by log message.
    public static let messageIDs: [String: String] = [
        "session renewed": "6c2d1f5a3b8e4f0e9a7d2c4b1e8f3a90",
        "session-server budget above 80%": "8b3e5d1a6c2f4e9a8d7b0c5e3f1a9d62",
        "session-server budget exceeded": "4f7a2c9e1b6d4a3f8e5c0d2b9a7f1e38",
        "renewal failed": "b1f04a7e2c9d4e3f8a6b5c7d9e0f1a21",
        "needs attention: bunq rejected the credentials": "e94c7b2a5d1f4c8e9b3a6d0f2e7c5a13",
        "token granted to a new caller": "3a8f6e1c9b2d4a7f8e5c0b3d6a9f2e47",
        "certificate expiring": "d7a2c9e4f1b84e6a9c3d5f0b8e2a7c61",
        "certificate expired": "e9a9775490c14205a6dc820588b75fe0",
        "ready": "5f3e9b1a7c2d4e8f9a0b6c3d1e7f4a25",
    ]

    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let identifier: String

    public init(identifier: String) {
        self.identifier = identifier
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Whether stderr is connected to the journal (`$JOURNAL_STREAM` names its device and inode), as under systemd.
    public static var stderrIsJournal: Bool {
        guard let value = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        var info = stat()
        guard parts.count == 2, fstat(2, &info) == 0 else { return false }
        return String(info.st_dev) == parts[0] && String(info.st_ino) == parts[1]
    }

    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// The journal field name for a metadata key: upper case, anything but letters and digits becomes `_`.
    public static func fieldName(_ key: String) -> String {
        var name = String(key.uppercased().map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "_" })
        while name.hasPrefix("_") { name.removeFirst() }  // leading underscores are reserved for trusted fields
        return name.isEmpty ? "FIELD" : name
    }

    /// The fields of one entry, in journal order.
    public func fields(level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?,
                       file: String, function: String, line: UInt) -> [String] {
        var fields = [
            "MESSAGE=\(message)", "PRIORITY=\(Self.priority(level))", "SYSLOG_IDENTIFIER=\(identifier)",
            "CODE_FILE=\(file)", "CODE_LINE=\(line)", "CODE_FUNC=\(function)",
        ]
        if let id = Self.messageIDs[message.description] { fields.append("MESSAGE_ID=\(id)") }
        for (key, value) in metadata.merging(explicit ?? [:], uniquingKeysWith: { _, new in new }) {
            fields.append("\(Self.fieldName(key))=\(value)")
        }
        return fields
    }

    public func log(event: LogEvent) {
        let entries = fields(level: event.level, message: event.message, metadata: event.metadata, file: event.file,
                             function: event.function, line: event.line)
        var buffers = entries.map { Array($0.utf8) }
        var vectors: [iovec] = []
        vectors.reserveCapacity(buffers.count)
        for index in buffers.indices {
            buffers[index].withUnsafeMutableBytes { bytes in
                vectors.append(iovec(iov_base: bytes.baseAddress, iov_len: bytes.count))
            }
        }
        // The buffers outlive the call: `buffers` is alive until the end of this scope.
        withExtendedLifetime(buffers) {
            _ = vectors.withUnsafeBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) }
        }
    }
}
