import DynamicJSON
import Foundation
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The bunq API proxy's cost per request: the same `GET /v1/user` sent to the sandbox directly (over TCP with
/// the session token, as an application that did bunq's headers itself would) and through the proxy (over its
/// Unix socket with `X-Bunq-Context`), one after the other in the same run, keep-alive connections.
///
/// The sandbox runs without rate limits here: the rows measure the proxy's work (its HTTP codec, the signature
/// over the body, libcurl, verifying bunq's signature, the audit record), not bunq's windows, which would cap
/// both at 3 requests per 3 s.
extension Bench {
    static func proxyRows(bin: String, work: String, base: String, seconds: Double) throws -> [String] {
        let daemon = try startDaemon(bin: bin, work: work, base: base, name: "proxy", extra: "proxy: {socket: \(work)/proxy.sock}")
        defer { daemon.stop() }
        guard let token = try sessionToken(work + "/proxy.socket"),
              let port = URLComponents(string: base)?.port else { throw BenchError("no session token to call the sandbox with") }
        // bunq (and the sandbox) refuse a request id seen before: each direct request gets a fresh one.
        let direct: @Sendable () -> [UInt8] = {
            Array(("GET /v1/user HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nCache-Control: no-cache\r\n"
                + "X-Bunq-Client-Request-Id: \(UUID().uuidString)\r\nX-Bunq-Geolocation: 0 0 0 0 NL\r\n"
                + "X-Bunq-Language: en_US\r\nX-Bunq-Region: nl_NL\r\nX-Bunq-Client-Authentication: \(token)\r\n\r\n").utf8)
        }
        let proxiedBytes = Array("GET /v1/user HTTP/1.1\r\nHost: localhost\r\nX-Bunq-Context: ops\r\n\r\n".utf8)
        let proxied: @Sendable () -> [UInt8] = { proxiedBytes }
        var rows: [String] = []
        for connections in [1, 8] {
            _ = httpLoad(connect: { RawSockets.tcp(port) }, request: direct, connections: connections, seconds: 1)  // warm-up
            _ = httpLoad(connect: { RawSockets.unix(work + "/proxy.sock") }, request: proxied, connections: connections, seconds: 1)
            let sandboxDirect = httpLoad(connect: { RawSockets.tcp(port) }, request: direct, connections: connections, seconds: seconds)
            let cpuBefore = cpuSeconds(daemon.process.processIdentifier)
            let throughProxy = httpLoad(connect: { RawSockets.unix(work + "/proxy.sock") }, request: proxied,
                                        connections: connections, seconds: seconds)
            let cpuPerRequest = (cpuSeconds(daemon.process.processIdentifier) - cpuBefore)
                / max(1, throughProxy.rate * seconds) * 1e6
            let row = "| bunq API proxy, `GET /v1/user`, \(connections) connection\(connections == 1 ? "" : "s"): direct / proxied | "
                + "\(Int(sandboxDirect.rate)) / \(Int(throughProxy.rate)) /s | "
                + "p50 \(format(sandboxDirect.p50)) / \(format(throughProxy.p50)), p99 \(format(sandboxDirect.p99)) / \(format(throughProxy.p99)) | "
                + "overhead p50 \(format(throughProxy.p50 &- sandboxDirect.p50)); "
                + String(format: "%.0f µs daemon CPU per request", cpuPerRequest) + " |"
            emit(row)
            rows.append(row)
        }
        return rows
    }

    /// The session token of `ops`, from the daemon's socket.
    static func sessionToken(_ socket: String) throws -> String? {
        guard let fd = RawSockets.unix(socket) else { return nil }
        defer { close(fd) }
        let line = Array((#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"# + "\n").utf8)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var buffer = [UInt8](repeating: 0, count: 8_192)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return JSONValue(parsing: Data(buffer.prefix(count)))?["result"]?["token"]?.string
    }

    /// `connections` keep-alive HTTP/1.1 clients, one request outstanding each, for `seconds`; a reply is read to
    /// the end of its `Content-Length` body, and only a 200 counts.
    static func httpLoad(connect: @escaping @Sendable () -> Int32?, request: @escaping @Sendable () -> [UInt8],
                         connections: Int, seconds: Double) -> LoadResult {
        closedLoop(connections: connections, seconds: seconds, connect: connect) { fd, buffer in
            let bytes = request()
            return bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count
                && readReply(fd, &buffer) == 200
        }
    }

    /// Reads one HTTP response (head, then `Content-Length` bytes); its status, or nil.
    static func readReply(_ fd: Int32, _ buffer: inout [UInt8]) -> Int? {
        var got = 0
        var headEnd: Int?
        var length = 0
        while true {
            if got == buffer.count { buffer.append(contentsOf: [UInt8](repeating: 0, count: buffer.count)) }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
            guard count > 0 else { return nil }
            got += count
            if headEnd == nil, got >= 4 {
                for index in 3..<got where buffer[index - 3] == 13 && buffer[index - 2] == 10 && buffer[index - 1] == 13 && buffer[index] == 10 {
                    headEnd = index + 1
                    let head = String(decoding: buffer[0..<index], as: UTF8.self).lowercased()
                    if let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }) {
                        length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
                    }
                    break
                }
            }
            if let headEnd, got >= headEnd + length {
                let statusLine = String(decoding: buffer[0..<min(got, 12)], as: UTF8.self)
                return Int(statusLine.dropFirst(9).prefix(3))
            }
        }
    }
}
