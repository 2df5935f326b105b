import Foundation
import TestThreads
import Testing
import TestSupport

/// The daemon while its state store does not answer (issue 25): tokens, signatures and proxied requests are served
/// from memory within a second throughout, a renewal that cannot be saved is not handed out (the current session
/// is), the store's failure shows in `daemon.status` and is logged once, and once the store answers again the
/// renewals resume by themselves — nothing lost, nothing registered twice. Under bunq's limits (scaled).
///
/// One case at a time, each on a thread of its own: its clients (a socket client, curl) block while they wait for
/// the daemon. Long as a whole: one lane runs the chain from the start.
@Suite(.serialized, .ownThread, .tags(.long)) struct StoreOutageTests {
    enum Fault: String, CaseIterable, Sendable, CustomTestStringConvertible {
        /// PostgreSQL's processes stopped with SIGSTOP: connections stay open, nothing is refused, nothing answers.
        case frozenPostgreSQL
        /// The network to PostgreSQL black-holed: a relay that stops forwarding (new connections hang as well).
        case blackHoledPostgreSQL
        /// SQLite held by another process's write transaction.
        case lockedSQLite
        var testDescription: String { rawValue }
    }

    /// A TCP relay to PostgreSQL that stops forwarding on SIGUSR1 (bytes are held, new connections get nothing)
    /// and resumes on SIGUSR2: a network partition that drops packets rather than refusing connections.
    static let relay = """
        import asyncio, signal, sys
        # A test runner's threads may block signals, and a child inherits the mask.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM})
        port, host, upstream = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        open_ = asyncio.Event()
        open_.set()
        async def gate():
            await open_.wait()
        async def pipe(reader, writer):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    await gate()
                    writer.write(data)
                    await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()
        async def handle(client_reader, client_writer):
            await gate()
            try:
                up_reader, up_writer = await asyncio.open_connection(host, upstream)
            except Exception:
                client_writer.close()
                return
            await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))
        async def main():
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, open_.clear)
            loop.add_signal_handler(signal.SIGUSR2, open_.set)
            server = await asyncio.start_server(handle, "127.0.0.1", port)
            print("relaying", flush=True)
            async with server:
                await server.serve_forever()
        asyncio.run(main())
        """

    @Test(arguments: Fault.allCases)
    func tokensSignaturesAndProxiedRequestsNeverWaitForTheStore(_ fault: Fault) async throws {
        if fault != .lockedSQLite, let reason = PostgresServer.unavailable {
            #expect(!Skip.report("store outage on PostgreSQL: \(reason)"))
            return
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let server = fault == .lockedSQLite ? nil : try PostgresServer()
        defer { server?.stop() }
        var relay: ChildProcess?
        defer { _ = relay?.stop(signal: SIGKILL) }
        let sandbox = try await Sandbox.start(in: dir, ["--session-timeout", "40"])
        defer { _ = sandbox.child.stop() }

        var state = "state:\n  directory: \(dir.path("state"))\n  timeout: 1s\n"
        if let server {
            var port = server.port
            if fault == .blackHoledPostgreSQL {
                port = try freeLoopbackPort()
                relay = try ChildProcess("/usr/bin/python3", ["-c", Self.relay, "\(port)", "127.0.0.1", "\(server.port)"],
                                         log: dir.path("relay.log"))
                #expect(await relay!.waitFor(.seconds(20)) { $0.contains("relaying") }, "\(relay!.log)")
            }
            let keyFile = try dir.write("master.key", (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined())
            chmod(keyFile, 0o600)
            state += """
                  backend: postgresql
                  master_key_file: \(keyFile)
                  postgresql: {url: 'postgresql://\(server.user)@127.0.0.1:\(port)/\(server.database)', password_file: \(server.passwordFile)}

                """
        }
        var config = try String(contentsOfFile: try writeConfig(dir, sandbox: sandbox, apiKey: try sandbox.newAPIKey(),
                                                                 provider: false,
                                                                 extra: "proxy: {socket: \(dir.path("proxy.sock"))}\n"),
                                encoding: .utf8)
        config = config.replacingOccurrences(of: "state:\n  directory: \(dir.path("state"))\n", with: state)
        #expect(config.contains("timeout: 1s"))
        let path = try dir.write("config.yaml", config)
        let daemon = try ChildProcess(Binaries.daemon, ["--config", path], log: dir.path("daemon.log"))
        defer { _ = daemon.stop() }
        #expect(await daemon.waitFor(.seconds(60)) { $0.contains("[bunq_sessiond] ready") }, "\(daemon.log)")

        let socket = dir.path("socket")
        func call(_ method: String, _ params: String) throws -> [String: Any] {
            try RawSocketClient(socket).call(#"{"jsonrpc":"2.0","id":1,"method":"\#(method)","params":\#(params)}"#)
        }
        var live: [String: Any]?
        #expect(await eventually(within: .seconds(30)) {
            live = result((try? call("session.get", #"{"context":"ops"}"#)) ?? [:])
            return live?["token"] != nil
        }, "\(daemon.log)")
        let token = try #require(live?["token"] as? String)
        let generation = try #require(live?["generation"] as? Int)
        let installations = try sandbox.stat("installations")
        #expect(try ProxyTests.request(dir.path("proxy.sock"), dir, "/v1/user").status == 200)

        // The fault.
        var holder: SQLiteWriteLock?
        switch fault {
        case .frozenPostgreSQL: server?.freeze()
        case .blackHoledPostgreSQL: kill(relay!.process.processIdentifier, SIGUSR1)
        case .lockedSQLite: holder = try await SQLiteWriteLock(dir.path("state/bunq-sessiond.sqlite"), log: dir.path("holder.log"))
        }
        // A renewal now gets a new session from bunq but cannot save it: not handed out, retried later. The
        // request that asked for it is answered, not left waiting.
        let renewStarted = ContinuousClock.now
        let renewal = try call("session.renew", #"{"context":"ops","force":true}"#)
        #expect(ContinuousClock.now - renewStarted < .seconds(10), "session.renew answered within bounds: \(renewal)")
        #expect(renewal["error"] != nil, "a renewal that could not be saved is no renewal: \(renewal)")

        // Serving goes on from memory, each answer within a second, the current session throughout.
        var slowest = Duration.zero
        var answers = 0
        let window = ContinuousClock.now + .seconds(6)
        while ContinuousClock.now < window {
            var started = ContinuousClock.now
            let got = result(try call("session.get", #"{"context":"ops"}"#))
            slowest = max(slowest, ContinuousClock.now - started)
            #expect(got?["token"] as? String == token && got?["generation"] as? Int == generation, "\(String(describing: got))")
            started = ContinuousClock.now
            let signed = result(try call("request.sign", #"{"context":"ops","body":"{\"amount\":\"1.00\"}"}"#))
            slowest = max(slowest, ContinuousClock.now - started)
            #expect(signed?["signature"] is String, "\(String(describing: signed))")
            started = ContinuousClock.now
            let proxied = try ProxyTests.request(dir.path("proxy.sock"), dir, "/v1/user")
            slowest = max(slowest, ContinuousClock.now - started)
            #expect(proxied.status == 200, "proxied GET during the outage: \(proxied.status) \(String(decoding: proxied.body, as: UTF8.self))")
            answers += 3
        }
        #expect(answers >= 9 && slowest < .seconds(1), "\(answers) answers during the outage, the slowest \(slowest)")
        let status = try #require(result(try call("daemon.status", "{}")))
        let store = status["store"] as? [String: Any]
        #expect(store?["reachable"] as? Bool == false && store?["failing_since"] is String, "\(status)")
        let ctl = try Command.run([Binaries.directory.appendingPathComponent("bunq-sessionctl").path, "status", "--socket", socket])
        #expect(ctl.stdoutText.contains("state store (\(fault == .lockedSQLite ? "sqlite" : "postgresql")): UNREACHABLE since"),
                "\(ctl.stdoutText)\(ctl.stderrText)")

        // The store answers again: renewals resume without a restart.
        switch fault {
        case .frozenPostgreSQL: server?.thaw()
        case .blackHoledPostgreSQL: kill(relay!.process.processIdentifier, SIGUSR2)
        case .lockedSQLite:
            try await holder?.release()
        }
        #expect(await eventually(within: .seconds(30)) {
            (result((try? call("session.get", #"{"context":"ops"}"#)) ?? [:])?["generation"] as? Int ?? 0) > generation
        }, "renewed after the store came back: \(daemon.log.suffix(3_000))")
        #expect(await eventually(within: .seconds(10)) {
            (result((try? call("daemon.status", "{}")) ?? [:])?["store"] as? [String: Any])?["reachable"] as? Bool == true
        })
        let log = daemon.log
        #expect(log.components(separatedBy: "state store unreachable").count - 1 == 1, "logged once: \(log.suffix(3_000))")
        #expect(log.components(separatedBy: "state store reachable again").count - 1 == 1, "\(log.suffix(3_000))")
        #expect(try sandbox.stat("installations") == installations, "nothing registered again")
        #expect(try sandbox.requests("POST /v1/device-server") == 1, "one device, ever")
    }
}
