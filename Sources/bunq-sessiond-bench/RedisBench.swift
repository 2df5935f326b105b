import Foundation
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The yardstick for the token path (issue 17): redis GET of a value the size of a `session.get` answer, over a
/// Unix socket, by the same load generator (poll(2), one request outstanding per connection) in the same run: it
/// speaks RESP to redis and our protocol to the daemon; the ratio is printed.
extension Bench {
    /// A redis-server of the bench's own on a Unix socket (no TCP, no persistence); nil when redis-server is not
    /// installed (`make deps` installs it).
    static func startRedis(work: String) throws -> Child? {
        let binary = "/usr/bin/redis-server"
        guard FileManager.default.isExecutableFile(atPath: binary) else { return nil }
        let redis = try Child(binary, ["--port", "0", "--unixsocket", work + "/redis.sock", "--unixsocketperm", "700",
                                       "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", work],
                              log: work + "/redis.log")
        for _ in 0..<100 where RawSockets.unix(work + "/redis.sock") == nil { usleep(50_000) }
        return redis
    }

    /// `SET k VALUE` over RESP; whether redis said OK.
    static func redisSet(_ socket: String, _ value: [UInt8]) -> Bool {
        guard let fd = RawSockets.unix(socket) else { return false }
        defer { close(fd) }
        let command = Array("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$\(value.count)\r\n".utf8) + value + Array("\r\n".utf8)
        guard command.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == command.count else { return false }
        var reply = [UInt8](repeating: 0, count: 64)
        let count = reply.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return count > 0 && reply.starts(with: Array("+OK".utf8))
    }

    /// One `session.get` answer of `ops` from the daemon's socket: what the redis value mirrors in size.
    static func sessionGetAnswer(_ socket: String) -> [UInt8]? {
        guard let fd = RawSockets.unix(socket) else { return nil }
        defer { close(fd) }
        let line = Array((#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"# + "\n").utf8)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var buffer = [UInt8](repeating: 0, count: 8_192)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        return count > 0 ? Array(buffer.prefix(count)) : nil
    }

    /// `session.get` and redis GET side by side at 1 and 50 connections, one after the other in this run, with
    /// the ratio and the daemon's CPU per request.
    static func redisRows(work: String, socket: String, daemonPID: Int32, seconds: Double) throws -> [String] {
        guard let redis = try startRedis(work: work) else {
            emit("(redis rows skipped: /usr/bin/redis-server is missing; make deps installs it)")
            return []
        }
        defer { redis.stop() }
        guard let answer = sessionGetAnswer(socket), redisSet(work + "/redis.sock", answer) else {
            throw BenchError("could not load the session.get answer into redis")
        }
        let getLine = Array((#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"# + "\n").utf8)
        let redisGet = Array("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".utf8)
        let redisSocket = work + "/redis.sock"
        var rows: [String] = []
        for connections in [1, 50] {
            let threads = min(2, connections)
            func redis(_ seconds: Double) -> LoadResult {
                pollLoad(connections: connections, threads: threads, seconds: seconds, connect: { RawSockets.unix(redisSocket) },
                          request: redisGet, complete: wholeBulkString)
            }
            _ = redis(1)  // warm-up
            let redisResult = redis(seconds)
            let cpuBefore = cpuSeconds(daemonPID)
            let ours = pollLoad(connections: connections, threads: threads, seconds: seconds, connect: { RawSockets.unix(socket) },
                                 request: getLine, complete: wholeLine)
            let cpuPerRequest = (cpuSeconds(daemonPID) - cpuBefore) / max(1, ours.rate * seconds) * 1e6
            let row = "| `session.get` / redis GET (\(answer.count) bytes), \(connections) connection\(connections == 1 ? "" : "s"), same run | "
                + "\(Int(ours.rate)) / \(Int(redisResult.rate)) /s = "
                + String(format: "%.2f×", ours.rate / max(1, redisResult.rate)) + " | "
                + "p50 \(format(ours.p50)) / \(format(redisResult.p50)), p99 \(format(ours.p99)) / \(format(redisResult.p99)) | "
                + String(format: "%.1f µs daemon CPU per session.get", cpuPerRequest) + " |"
            emit(row)
            rows.append(row)
        }
        return rows
    }
}
