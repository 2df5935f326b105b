import Foundation
import TestSupport

/// The cluster's figures: how long a rotation committed by one daemon takes to be served by another, and
/// `session.get` on a daemon whose store is PostgreSQL (the token path never touches the store, so it should
/// match the SQLite row). A PostgreSQL 15 of the bench's own, as the tests start it.
extension Bench {
    static func clusterRows(bin: String, work: String, base: String, seconds: Double) throws -> [String] {
        if let reason = PostgresServer.unavailable { return ["| cluster rows | skipped: \(reason) |"] }
        let server = try PostgresServer()
        defer { server.stop() }
        let keyFile = work + "/cluster-master.key"
        try (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
            .write(toFile: keyFile, atomically: true, encoding: .utf8)
        chmod(keyFile, 0o600)
        var daemons: [(child: Child, socket: String)] = []
        defer { for daemon in daemons { daemon.child.stop() } }
        for index in 0..<2 {
            let socket = work + "/cluster-\(index).socket"
            let config = work + "/cluster-\(index).yaml"
            // Unlimited: a bench of propagation, not of bunq's windows (100 renewals in a row would take 50 min).
            try """
                bunq: {api_base_url: '\(base)/v1/', oauth_authorize_url: '\(base)/auth', oauth_token_url: '\(base)/v1/token',
                       rate_limits: unlimited}
                socket: {path: \(socket)}
                state:
                  directory: \(work)/cluster-state-\(index)
                  backend: postgresql
                  master_key_file: \(keyFile)
                  postgresql: {url: '\(server.url)', password_file: \(server.passwordFile)}
                cluster: {instance: bench-\(index), lease_seconds: 3}
                renewal: {min_manual_interval: 0}
                api_keys:
                  - {name: ops, key_file: \(work)/ops.key}
                access: {admin: {users: ['\(getuid())']}}
                """.write(toFile: config, atomically: true, encoding: .utf8)
            let child = try Child(bin + "/bunq-sessiond", ["--config", config], log: work + "/cluster-\(index).log")
            daemons.append((child, socket))
            guard child.waitFor("[bunq_sessiond] ready", timeout: 60), waitLive(socket) else {
                throw BenchError("cluster daemon \(index) did not get ready: \(child.log.suffix(2000))")
            }
        }
        // The holder of ops renews; the other only follows.
        var holder: Int?
        for _ in 0..<100 where holder == nil {
            holder = (0..<2).first { index in
                let status = Rpc(daemons[index].socket)?.call(#"{"jsonrpc":"2.0","id":1,"method":"daemon.status","params":{}}"#) ?? ""
                return status.contains(#""leases_held":1"#)
            }
            if holder == nil { usleep(100_000) }
        }
        guard let holder, let renewer = Rpc(daemons[holder].socket), let follower = Rpc(daemons[1 - holder].socket) else {
            throw BenchError("no daemon took the lease of ops")
        }
        var delays: [UInt64] = []
        for _ in 0..<100 {
            let reply = renewer.call(#"{"jsonrpc":"2.0","id":1,"method":"session.renew","params":{"context":"ops","force":true}}"#)
            let committed = DispatchTime.now().uptimeNanoseconds
            guard let generation = Self.generation(in: reply) else { throw BenchError("renewal failed: \(reply)") }
            while (Self.generation(in: follower.call(#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#)) ?? 0)
                    < generation {
                if DispatchTime.now().uptimeNanoseconds - committed > 10_000_000_000 { throw BenchError("generation \(generation) never arrived") }
            }
            delays.append(DispatchTime.now().uptimeNanoseconds - committed)
        }
        delays.sort()
        let propagation = "| rotation propagation between two daemons (PostgreSQL NOTIFY), 100 renewals | "
            + "p50 \(format(delays[delays.count / 2])) | p99 \(format(delays[delays.count * 99 / 100])) | "
            + "max \(format(delays.last!)) |"
        emit(propagation)
        let getLine = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        _ = load(daemons[1 - holder].socket, getLine, connections: 50, seconds: 1)
        let get = load(daemons[1 - holder].socket, getLine, connections: 50, seconds: seconds)
        let getRow = "| `session.get`, 50 connections, PostgreSQL backend (a follower) | \(Int(get.rate)) /s | "
            + "p50 \(format(get.p50)) | p99 \(format(get.p99)) |"
        emit(getRow)
        return [propagation, getRow]
    }

    static func generation(in reply: String) -> Int? {
        guard let range = reply.range(of: #""generation":"#) else { return nil }
        return Int(reply[range.upperBound...].prefix { $0.isNumber })
    }
}

/// One connection to a daemon's socket, one request at a time.
final class Rpc {
    let fd: Int32
    private var pending: [UInt8] = []

    init?(_ socket: String) {
        guard let fd = RawSockets.unix(socket) else { return nil }
        self.fd = fd
    }

    deinit { close(fd) }

    func call(_ line: String) -> String {
        let request = Array((line + "\n").utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return "" }
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                defer { pending.removeSubrange(...newline) }
                return String(decoding: pending[..<newline], as: UTF8.self)
            }
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return "" }
            pending += buffer[..<count]
        }
    }
}
