import BunqAPI
import BunqCrypto
import DynamicJSON
import Foundation
import SessionKeeper
import Synchronization
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// `make bench`: bunq-sessiond's throughput, latency, signing rate, memory and start-up time, against a local
/// bunq-sandbox. A benchmark, not a test: it prints figures (also as README table rows).
@main
struct Bench {
    static func main() async throws {
        guard CommandLine.arguments.count >= 2 else {
            emit("usage: bunq-sessiond-bench BIN_DIR   (the directory holding bunq-sessiond and bunq-sandbox)")
            exit(2)
        }
        let bin = CommandLine.arguments[1]
        let seconds = Double(ProcessInfo.processInfo.environment["BENCH_SECONDS"] ?? "5") ?? 5
        let identities = Int(ProcessInfo.processInfo.environment["BENCH_IDENTITIES"] ?? "100000") ?? 100_000
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("bunq-bench-\(getpid())").path
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }

        let sandbox = try Child(bin + "/bunq-sandbox", ["--port", "0", "--session-timeout", "86400",
                                                      "--psd2-first-session-timeout", "86400", "--rate-limits", "off"],
                                log: work + "/sandbox.log")
        defer { sandbox.stop() }
        guard sandbox.waitFor("listening on", timeout: 20), let base = sandbox.log.split(separator: "\n").first?
            .replacingOccurrences(of: "listening on ", with: "") else { fatalError("bunq-sandbox did not start") }
        let apiKey = try sandboxAPIKey(base)
        try apiKey.write(toFile: work + "/ops.key", atomically: true, encoding: .utf8)

        emit("bunq-sessiond benchmark: \(ProcessInfo.processInfo.activeProcessorCount) cores, \(seconds) s per run")
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "metrics" {
            // Off, on, on and scraped, one after the other: the cost of metrics on the token path.
            let config = try writeConfig(work, base: base, state: work + "/state")
            let daemon = try Child(bin + "/bunq-sessiond", ["--config", config], log: work + "/daemon.log")
            guard daemon.waitFor("[bunq_sessiond] ready", timeout: 60), waitLive(work + "/socket") else { fatalError("not ready") }
            let getLine = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
            _ = load(work + "/socket", getLine, connections: 50, seconds: 1)
            let off = load(work + "/socket", getLine, connections: 50, seconds: seconds)
            daemon.stop()
            emit("| `session.get`, 50 connections, metrics off | \(Int(off.rate)) /s | p50 \(format(off.p50)) | p99 \(format(off.p99)) | |")
            for scrape in [false, true] { emit(try metricsRow(bin: bin, work: work, base: base, seconds: seconds, scrape: scrape)) }
            return
        }
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "cluster" {
            _ = try clusterRows(bin: bin, work: work, base: base, seconds: seconds)  // each row is emitted as measured
            return
        }
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "redis" {
            let daemon = try startDaemon(bin: bin, work: work, base: base, name: "redis-yardstick", extra: "")
            defer { daemon.stop() }
            _ = load(work + "/redis-yardstick.socket", #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#,
                     connections: 50, seconds: 1)  // warm-up
            _ = try redisRows(work: work, socket: work + "/redis-yardstick.socket", daemonPID: daemon.process.processIdentifier,
                              seconds: seconds)
            return
        }
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "sign" {
            let daemon = try startDaemon(bin: bin, work: work, base: base, name: "sign", extra: "")
            defer { daemon.stop() }
            _ = signRows(socket: work + "/sign.socket", pid: daemon.process.processIdentifier, seconds: seconds)
            return
        }
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "store" {
            _ = try await storeRows(bin: bin, work: work, base: base, seconds: seconds)  // each row is emitted as measured
            return
        }
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "proxy" {
            _ = try proxyRows(bin: bin, work: work, base: base, seconds: seconds)  // each row is emitted as measured
            return
        }
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "budget" {
            emit(try budgetRow(bin: bin, work: work, seconds: max(20, seconds * 4)))
            return
        }
        var rows: [String] = []
        if ProcessInfo.processInfo.environment["BENCH_ONLY"] == "identities" {
            rows.append(try await identitiesRow(bin: bin, work: work, base: base, identities: identities, seconds: seconds))
            return
        }

        // 1. session.get and request.sign against a daemon with one live identity.
        let config = try writeConfig(work, base: base, state: work + "/state")
        let daemon = try Child(bin + "/bunq-sessiond", ["--config", config], log: work + "/daemon.log")
        guard daemon.waitFor("[bunq_sessiond] ready", timeout: 60), waitLive(work + "/socket") else {
            daemon.stop()
            fatalError("the daemon did not get ready: \(daemon.log)")
        }
        let getLine = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        _ = load(work + "/socket", getLine, connections: 50, seconds: 1)  // warm-up
        let pid = daemon.process.processIdentifier
        for connections in [1, 50, 200] {
            let cpuBefore = cpuSeconds(pid)
            let result = load(work + "/socket", getLine, connections: connections, seconds: seconds)
            let cpuPerRequest = (cpuSeconds(pid) - cpuBefore) / max(1, result.rate * seconds) * 1e6
            let row = "| `session.get`, \(connections) connection\(connections == 1 ? "" : "s") | "
                + "\(Int(result.rate)) /s | p50 \(format(result.p50)) | p99 \(format(result.p99)) | "
                + String(format: "%.1f µs daemon CPU per request", cpuPerRequest) + " |"
            emit(row)
            rows.append(row)
        }
        // Pipelined: 8 requests in flight per connection (the protocol allows it), so per-request syscalls and
        // context switches are shared; latency is that of a whole batch of 8.
        let pipelined = load(work + "/socket", getLine, connections: 50, seconds: seconds, depth: 8)
        let pipelinedRow = "| `session.get`, 50 connections × 8 pipelined | \(Int(pipelined.rate)) /s | "
            + "batch p50 \(format(pipelined.p50)) | batch p99 \(format(pipelined.p99)) |"
        emit(pipelinedRow)
        rows.append(pipelinedRow)
        rows += signRows(socket: work + "/socket", pid: pid, seconds: seconds)
        // The yardstick: redis GET of a value as large as the answer, by the same load generator, now.
        rows += try redisRows(work: work, socket: work + "/socket", daemonPID: pid, seconds: seconds)
        daemon.stop()

        // 1b. The same token path with metrics on, while Prometheus scrapes ten times a second: counting answers
        // and scraping must not show on session.get.
        for scrape in [false, true] {
            rows.append(try metricsRow(bin: bin, work: work, base: base, seconds: seconds, scrape: scrape))
            emit(rows.last!)
        }

        // 2. Start-up and memory with many stored identities: a restart of a large deployment, in the same state
        // as above (so `ops` is restored, not registered anew, and READY waits for no registration).
        rows.append(try await identitiesRow(bin: bin, work: work, base: base, identities: identities, seconds: seconds))

        // 3. A cluster on PostgreSQL: rotation propagation and the token path.
        rows += try clusterRows(bin: bin, work: work, base: base, seconds: seconds)  // emitted as measured

        // 3b. The state store: each operation's latency, and serving while PostgreSQL is frozen.
        rows += try await storeRows(bin: bin, work: work, base: base, seconds: seconds)

        // 4. The bunq API proxy: its cost per request against calling the sandbox directly.
        rows += try proxyRows(bin: bin, work: work, base: base, seconds: seconds)

        // 5. The session-server budget under saturation: bunq's limits on both sides, scaled to a hundredth (one
        // call per 0.3 s) so a minute stands for 100; 120 new identities queue for their first sessions.
        rows.append(try budgetRow(bin: bin, work: work, seconds: max(20, seconds * 4)))
        emit(rows.last!)
        emit("\nREADME rows:\n" + rows.joined(separator: "\n"))
    }

    /// Start-up and memory with `identities` stored identities (`BENCH_ONLY=identities` alone).
    static func identitiesRow(bin: String, work: String, base: String, identities: Int, seconds: Double) async throws -> String {
        let bigState = work + "/state"
        let seeded = try await seed(bigState, count: identities)
        let bigConfig = try writeConfig(work, base: base, state: bigState, name: "big.yaml", socket: work + "/big.socket")
        let started = Date()
        let big = try Child(bin + "/bunq-sessiond", ["--config", bigConfig], log: work + "/big.log")
        defer { big.stop() }
        guard big.waitFor("[bunq_sessiond] ready", timeout: 120) else { fatalError("not ready: \(big.log.suffix(2000))") }
        let ready = Date().timeIntervalSince(started)
        usleep(1_000_000)
        let rss = residentMegabytes(big.process.processIdentifier)
        let bigGet = load(work + "/big.socket",
                          #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"user-\#(identities / 2)"}}"#,
                          connections: 50, seconds: min(seconds, 3))
        let bigRow = "| \(seeded) stored identities | ready in \(String(format: "%.2f", ready)) s | \(rss) MB resident | "
            + "`session.get` \(Int(bigGet.rate)) /s, p99 \(format(bigGet.p99)) |"
        emit(bigRow)
        return bigRow
    }

    /// `request.sign` at full rate (per daemon CPU-second against `openssl speed`), then `session.get` while it runs.
    static func signRows(socket: String, pid: Int32, seconds: Double) -> [String] {
        var rows: [String] = []
        let getLine = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        let body = String(repeating: "x", count: 200)
        let signLine = #"{"jsonrpc":"2.0","id":1,"method":"request.sign","params":{"context":"ops","body":"\#(body)"}}"#
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let signCPUBefore = cpuSeconds(pid)
        let sign = load(socket, signLine, connections: cores * 2, seconds: seconds)
        let signsPerCPUSecond = sign.rate * seconds / max(0.001, cpuSeconds(pid) - signCPUBefore)
        let opensslRate = opensslSignRate()
        let signRow = "| `request.sign`, \(cores * 2) connections | \(Int(sign.rate)) /s | p50 \(format(sign.p50)) | "
            + "\(Int(signsPerCPUSecond)) per daemon CPU-second vs openssl speed rsa2048 \(Int(opensslRate)) sign/s per core "
            + String(format: "(%.0f%%)", signsPerCPUSecond / max(1, opensslRate) * 100) + " |"
        emit(signRow)
        rows.append(signRow)
        // Both at once: what signing at full rate does to a token fetch's latency.
        let mixedSign = ResultBox()
        let signing = Thread {
            let result = load(socket, signLine, connections: cores * 2, seconds: seconds)
            mixedSign.result.withLock { $0 = result }
        }
        signing.start()
        let mixedGet = load(socket, getLine, connections: 50, seconds: seconds)
        Thread.sleep(forTimeInterval: 0.5)
        let mixedRow = "| `session.get`, 50 connections, while `request.sign` runs on \(cores * 2) | "
            + "\(Int(mixedGet.rate)) /s | p50 \(format(mixedGet.p50)) | p99 \(format(mixedGet.p99)) | "
            + "\(Int(mixedSign.result.withLock { $0.rate })) signatures/s meanwhile |"
        emit(mixedRow)
        rows.append(mixedRow)
        return rows
    }

    /// `session.get` at 50 connections on a daemon with metrics on (`scrape`: while Prometheus' rate of scrapes
    /// runs ten times faster, each an HTTP GET from this process, not a spawned curl whose start-up would weigh
    /// on the same 2 cores).
    static func metricsRow(bin: String, work: String, base: String, seconds: Double, scrape: Bool) throws -> String {
        let port = 19_464 + Int(getpid() % 1_000) + (scrape ? 1 : 0)
        let name = scrape ? "metrics-scraped" : "metrics"
        let daemon = try startDaemon(bin: bin, work: work, base: base, name: name,
                                     extra: "metrics: {listen: '127.0.0.1:\(port)'}")
        defer { daemon.stop() }
        let getLine = #"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"#
        _ = load(work + "/\(name).socket", getLine, connections: 50, seconds: 1)
        let scrapes = Mutex((count: 0, bytes: 0))
        let stop = Atomic<Bool>(false)
        let scraper = Thread {
            while scrape, !stop.load(ordering: .relaxed) {
                let bytes = httpGet(port: port, path: "/metrics")
                if bytes > 0 { scrapes.withLock { $0 = ($0.count + 1, bytes) } }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }
        scraper.start()
        let result = load(work + "/\(name).socket", getLine, connections: 50, seconds: seconds)
        stop.store(true, ordering: .relaxed)
        let (count, bytes) = scrapes.withLock { $0 }
        return "| `session.get`, 50 connections, metrics on" + (scrape ? " and scraped every 100 ms" : ", not scraped")
            + " | \(Int(result.rate)) /s | p50 \(format(result.p50)) | p99 \(format(result.p99)) | "
            + (scrape ? "\(count) scrapes of \(bytes / 1024) KiB meanwhile |" : "|")
    }

    /// A daemon of its own for one row: state `NAME-state`, socket `NAME.socket`, `extra` appended to the
    /// configuration; returned once it serves `ops`'s token.
    static func startDaemon(bin: String, work: String, base: String, name: String, extra: String) throws -> Child {
        let config = try writeConfig(work, base: base, state: work + "/\(name)-state", name: "\(name).yaml",
                                     socket: work + "/\(name).socket")
        try (try String(contentsOfFile: config, encoding: .utf8) + "\n\(extra)\n").write(toFile: config, atomically: true, encoding: .utf8)
        let daemon = try Child(bin + "/bunq-sessiond", ["--config", config], log: work + "/\(name)-daemon.log")
        guard daemon.waitFor("[bunq_sessiond] ready", timeout: 60), waitLive(work + "/\(name).socket") else {
            daemon.stop()
            throw BenchError("the \(name) daemon did not get ready: \(daemon.log.suffix(2000))")
        }
        return daemon
    }

    /// One HTTP/1.1 GET on 127.0.0.1: the bytes of the whole answer (0 on failure).
    static func httpGet(port: Int, path: String) -> Int {
        guard let fd = RawSockets.tcp(port) else { return 0 }
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return 0 }
        var total = 0
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { break }
            total += count
        }
        return total
    }

    /// Session-server calls the daemon sustains per IP, as a day at bunq's real window, against its 2,880.
    static func budgetRow(bin: String, work: String, seconds: Double) throws -> String {
        let scale = 0.01
        let sandbox = try Child(bin + "/bunq-sandbox", ["--port", "0", "--session-timeout", "600",
                                                      "--rate-limit-scale", "\(scale)"], log: work + "/budget-sandbox.log")
        defer { sandbox.stop() }
        guard sandbox.waitFor("listening on", timeout: 20), let base = sandbox.log.split(separator: "\n").first?
            .replacingOccurrences(of: "listening on ", with: "") else { fatalError("bunq-sandbox did not start") }
        var keys = ""
        for index in 0..<120 {
            var key: String?
            for _ in 0..<50 where key == nil {
                key = try? sandboxAPIKey(base)
                if key == nil { usleep(20_000) }
            }
            guard let key else { throw BenchError("no API key from the sandbox") }
            try key.write(toFile: work + "/budget-\(index).key", atomically: true, encoding: .utf8)
            keys += "  - {name: id-\(index), key_file: \(work)/budget-\(index).key}\n"
        }
        let config = work + "/budget.yaml"
        try """
            bunq: {api_base_url: '\(base)/v1/', oauth_authorize_url: '\(base)/auth', oauth_token_url: '\(base)/v1/token',
                   rate_limits: bunq, rate_limit_scale: \(scale)}
            socket: {path: \(work)/budget.socket}
            state: {directory: \(work)/budget-state}
            api_keys:
            \(keys)
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let daemon = try Child(bin + "/bunq-sessiond", ["--config", config], log: work + "/budget.log")
        defer { daemon.stop() }
        guard daemon.waitFor("[UnixListener] listening", timeout: 60) else { fatalError("no socket: \(daemon.log.suffix(2000))") }
        Thread.sleep(forTimeInterval: 2)
        let (calls0, at0) = (try sessionServerCalls(base), Date())
        Thread.sleep(forTimeInterval: min(seconds, 30))  // the queue holds 36 s of calls
        let (calls1, at1) = (try sessionServerCalls(base), Date())
        let perDay = Double(calls1 - calls0) / at1.timeIntervalSince(at0) * 86_400 * scale
        let limited = try stats(base)["rate_limited"]?.integer ?? -1
        return "| session-server calls sustained per IP, saturated (120 identities queued) | \(Int(perDay)) a day at bunq's 30 s | "
            + String(format: "%.1f%% of 2,880", perDay / 2_880 * 100) + " | \(limited) answered 429 |"
    }

    static func stats(_ base: String) throws -> JSONValue {
        let output = try run(["curl", "-sf", base + "/_sandbox/stats"])
        return JSONValue(parsing: Data(output.utf8)) ?? [:]
    }

    static func sessionServerCalls(_ base: String) throws -> Int {
        try stats(base)["requests"]?["POST /v1/session-server"]?.integer ?? 0
    }

    /// Writes a line to stdout at once (unbuffered), so each row shows as it is measured and survives a later failure.
    static func emit(_ line: String) {
        FileHandle.standardOutput.write(Data((line + "\n").utf8))
    }

    // MARK: Load

    /// A load run's result, handed back from another thread.
    final class ResultBox: Sendable {
        let result = Mutex(LoadResult(rate: 0, p50: 0, p99: 0))
    }

    struct LoadResult: Sendable {
        let rate: Double
        let p50: UInt64
        let p99: UInt64
    }

    /// `connections` clients, each with `depth` requests outstanding at a time (sent together), for `seconds`.
    /// Latencies are per batch; the rate counts requests.
    static func load(_ socket: String, _ line: String, connections: Int, seconds: Double, depth: Int = 1) -> LoadResult {
        let request = Array(String(repeating: line + "\n", count: depth).utf8)
        let result = closedLoop(connections: connections, seconds: seconds, connect: { RawSockets.unix(socket) }) { fd, buffer in
            guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
            else { return false }
            var got = 0, lines = 0
            while lines < depth {
                if got == buffer.count { buffer.append(contentsOf: [UInt8](repeating: 0, count: buffer.count)) }
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, $0.count - got, 0) }
                guard count > 0 else { return false }
                lines += buffer[got..<(got + count)].reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
                got += count
            }
            return true
        }
        return LoadResult(rate: result.rate * Double(depth), p50: result.p50, p99: result.p99)
    }

    /// `connections` threads, each on its own connection, running `exchange` (one request and its whole answer;
    /// false ends that client) back to back for `seconds`: the rate of exchanges and their p50 and p99.
    static func closedLoop(connections: Int, seconds: Double, connect: @escaping @Sendable () -> Int32?,
                           exchange: @escaping @Sendable (Int32, inout [UInt8]) -> Bool) -> LoadResult {
        let samples = Mutex<[UInt64]>([])
        let done = DispatchGroup()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        for _ in 0..<connections {
            done.enter()
            let thread = Thread {
                defer { done.leave() }
                guard let fd = connect() else { return }
                defer { close(fd) }
                var local: [UInt64] = []
                local.reserveCapacity(200_000)
                var buffer = [UInt8](repeating: 0, count: 65_536)
                while DispatchTime.now().uptimeNanoseconds < deadline {
                    let start = DispatchTime.now().uptimeNanoseconds
                    guard exchange(fd, &buffer) else { break }
                    local.append(DispatchTime.now().uptimeNanoseconds - start)
                }
                samples.withLock { $0.append(contentsOf: local) }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        done.wait()
        var all = samples.withLock { $0 }
        all.sort()
        guard !all.isEmpty else { return LoadResult(rate: 0, p50: 0, p99: 0) }
        return LoadResult(rate: Double(all.count) / seconds, p50: all[all.count / 2],
                          p99: all[min(all.count - 1, all.count * 99 / 100)])
    }

    static func waitLive(_ socket: String) -> Bool {
        let line = Array((#"{"jsonrpc":"2.0","id":1,"method":"session.get","params":{"context":"ops"}}"# + "\n").utf8)
        for _ in 0..<300 {
            if let fd = RawSockets.unix(socket) {
                _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                close(fd)
                if count > 0, String(decoding: buffer.prefix(count), as: UTF8.self).contains("\"token\"") { return true }
            }
            usleep(100_000)
        }
        return false
    }

    static func format(_ nanoseconds: UInt64) -> String {
        nanoseconds < 1_000_000 ? "\(nanoseconds / 1_000) µs" : String(format: "%.2f ms", Double(nanoseconds) / 1e6)
    }

    // MARK: Set-up

    static func sandboxAPIKey(_ base: String) throws -> String {
        let output = try run(["curl", "-sf", "-X", "POST", base + "/v1/sandbox-user-person"])
        let json = JSONValue(parsing: Data(output.utf8))
        guard let key = json?["Response"]?[0]?["ApiKey"]?["api_key"]?.string else { throw BenchError("no API key from the sandbox") }
        return key
    }

    static func writeConfig(_ work: String, base: String, state: String, name: String = "config.yaml",
                            socket: String? = nil) throws -> String {
        let path = work + "/" + name
        try """
            bunq: {api_base_url: '\(base)/v1/', oauth_authorize_url: '\(base)/auth', oauth_token_url: '\(base)/v1/token',
                   rate_limits: unlimited}
            socket: {path: \(socket ?? work + "/socket")}
            state: {directory: \(state)}
            api_keys:
              - {name: ops, key_file: \(work)/ops.key}
            access: {admin: {users: ['\(getuid())']}}
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Stores `count` OAuth-user identities with sessions valid for a week, as a large deployment would have.
    static func seed(_ directory: String, count: Int) async throws -> Int {
        let key = try MasterKey.load(credentialsDirectory: nil, stateDirectory: directory)
        let store = try StateStore(directory: directory, masterKey: key)
        let installationKey = try RSAPrivateKey.generateBlocking()
        let serverKey = try RSAPrivateKey.generateBlocking().publicKey.pem()
        var template = IdentityRegistration(kind: .oauthUser, secret: "")
        template.installationKeyPEM = try installationKey.pkcs8PEM()
        template.serverPublicKeyPEM = serverKey
        template.deviceBound = true
        template.sessionsOpened = 1
        let now = Date()
        for chunk in stride(from: 0, to: count, by: 10_000) {
            try await store.importContexts((chunk..<min(count, chunk + 10_000)).map { index in
                var registration = template
                registration.secret = String(format: "%064x", index)
                registration.installationToken = String(format: "%064x", index + 1)
                registration.installationId = index
                let session = SessionInfo(id: index, token: String(format: "%064x", index + 7), userId: 1_000_000 + index,
                                          created: now, expiresAt: now.addingTimeInterval(7 * 86_400))
                return StoredContext(name: "user-\(index)", kind: .oauthUser, registration: registration, session: session,
                                     generation: 1)
            })
        }
        return count
    }

    static func opensslSignRate() -> Double {
        guard let output = try? run(["openssl", "speed", "-seconds", "3", "rsa2048"]) else { return 0 }
        // "rsa 2048 bits 0.000211s 0.000013s   4730.0  79268.0": sign/s is the next-to-last field.
        guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("rsa 2048") }) else { return 0 }
        let fields = line.split(separator: " ")
        return fields.count >= 2 ? Double(fields[fields.count - 2]) ?? 0 : 0
    }

    /// User plus system CPU time of `pid` so far, in seconds (/proc/PID/stat fields 14 and 15).
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func residentMegabytes(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = line.split(separator: " ").compactMap({ Int($0) }).first else { return -1 }
        return kilobytes / 1024
    }

    static func run(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process logging to a file.
final class Child {
    let process = Process()
    let logPath: String

    init(_ executable: String, _ arguments: [String], log: String) throws {
        logPath = log
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func waitFor(_ text: String, timeout: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if log.contains(text) { return true }
            usleep(10_000)
        }
        return false
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        for _ in 0..<200 where process.isRunning { usleep(50_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
