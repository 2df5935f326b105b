import ConfigFile
import Foundation

/// `socket:` — where the JSON-RPC socket listens, its bounds, and how many threads serve it.
public struct SocketSettings: ConfigSection, Equatable {
    /// `socket.path` (default `/run/bunq-sessiond/socket`).
    public let path: String
    /// `socket.max_connections`, `max_connections_per_uid`, `idle_timeout`, `request_timeout`, `send_timeout`.
    public let limits: SocketServer.Limits
    /// Threads serving the sockets' I/O (`socket.event_loops`). Default: half the cores, at least one; on 2
    /// cores one loop measured the better tail (`make bench`), as the clients need the other core.
    public let eventLoops: Int

    public static let configKeys: [ConfigKeys] = [
        .mapping("socket", ["path", "max_connections", "max_connections_per_uid", "idle_timeout", "request_timeout",
                            "send_timeout", "event_loops"]),
    ]

    public init(reading config: ConfigReader) throws(ConfigurationError) {
        path = try config.string(["socket", "path"]) ?? "/run/bunq-sessiond/socket"
        guard path.hasPrefix("/"), path.utf8.count < 108 else {
            throw config.fail("socket.path", "must be an absolute path shorter than 108 bytes")
        }
        var limits = SocketServer.Limits()
        limits.maxConnections = try config.int(["socket", "max_connections"], default: 4_096, range: 1...1_000_000)
        limits.maxConnectionsPerUID = try config.int(["socket", "max_connections_per_uid"], default: 64, range: 1...1_000_000)
        limits.idleTimeout = .seconds(try config.int(["socket", "idle_timeout"], default: 300, range: 1...86_400))
        limits.requestTimeout = .seconds(try config.int(["socket", "request_timeout"], default: 10, range: 1...3_600))
        limits.sendTimeout = .seconds(try config.int(["socket", "send_timeout"], default: 30, range: 1...3_600))
        self.limits = limits
        eventLoops = try config.int(["socket", "event_loops"], default: max(1, ProcessInfo.processInfo.activeProcessorCount / 2),
                                    range: 1...256)
    }
}
