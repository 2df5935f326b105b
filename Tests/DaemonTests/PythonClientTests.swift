import Foundation
import TestThreads
import Testing
import TestSupport

/// `clients/python` installed with pip into a fresh virtualenv (from the repository alone: no index, and a build
/// backend of the standard library, so nothing is downloaded) and used against the real daemon: token, session, sign, subscribe,
/// report_invalid and errors as exceptions with the JSON-RPC code.
@Suite(.ownThread) struct PythonClientTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test func thePipInstalledClientServesTokensSignaturesAndRotations() async throws {
        guard FileManager.default.fileExists(atPath: "/usr/bin/python3") else {
            #expect(!Skip.report("the Python client: /usr/bin/python3 is missing (make deps installs python3-venv)"))
            return
        }
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let venv = dir.path("venv")
        try Command.check(["/usr/bin/python3", "-m", "venv", venv])
        let install = try Command.run([venv + "/bin/pip", "install", "--quiet", "--no-index",
                                       Self.repository.appendingPathComponent("clients/python").path])
        #expect(install.status == 0, "\(install.stderrText)")

        let running = try await RunningDaemon.start(provider: false)
        defer { running.stop() }
        let socket = running.dir.path("socket")
        // What the daemon itself signs for the same bytes (RSA PKCS#1 v1.5 is deterministic: equal signatures).
        let body = #"{"amount":{"value":"1.00","currency":"EUR"},"description":"café"}"#
        let quoted = String(decoding: try JSONSerialization.data(withJSONObject: [body]), as: UTF8.self).dropFirst().dropLast()
        let expected = try #require(result(try RawSocketClient(socket).call(
            #"{"jsonrpc":"2.0","id":1,"method":"request.sign","params":{"context":"ops","body":\#(quoted)}}"#))?["signature"] as? String)

        let script = try dir.write("client.py", """
            import json, os, sys, threading
            from bunq_sessiond import Client, SessiondError, SessiondUnreachable

            client = Client()  # from $BUNQ_SESSIOND_SOCKET
            out = {}
            out["token"] = client.token("ops")
            session = client.session("ops")
            out["session_keys"] = sorted(session)
            out["generation"] = session["generation"]
            out["signature"] = client.sign("ops", sys.argv[1].encode())
            try:
                client.token("no-such-context")
            except SessiondError as error:
                out["unknown_code"] = error.code
            try:
                Client("/nonexistent/socket").token("ops")
            except SessiondUnreachable as error:
                out["unreachable"] = error.code
            rotated = []
            ready = threading.Event()
            def listen():
                for note in Client().subscribe("ops"):
                    ready.set()
                    if note["method"] == "session.rotated":
                        rotated.append(note["params"])
                        return
            thread = threading.Thread(target=listen, daemon=True)
            thread.start()
            import time; time.sleep(0.5)
            renewed = client.report_invalid("ops", session["generation"])
            thread.join(30)
            out["renewed_generation"] = renewed["generation"]
            out["rotated"] = rotated[0]["generation"] if rotated else None
            out["rotated_token_differs"] = bool(rotated) and rotated[0]["token"] != out["token"]
            out["token_after"] = client.token("ops")
            print(json.dumps(out))
            """)
        let output = try Command.run(["/usr/bin/env", "BUNQ_SESSIOND_SOCKET=\(socket)", venv + "/bin/python", script, body])
        #expect(output.status == 0, "\(output.stderrText)")
        let answer = try #require(try JSONSerialization.jsonObject(with: output.stdout) as? [String: Any], "\(output.stdoutText)")
        let token = try #require(answer["token"] as? String)
        #expect(token.count == 64)
        #expect((answer["session_keys"] as? [String])?.contains("expires_at") == true)
        #expect(answer["signature"] as? String == expected, "the signature over exactly the bytes given")
        #expect(answer["unknown_code"] as? Int == 1001)
        #expect(answer["unreachable"] as? Int == -1)
        let generation = try #require(answer["generation"] as? Int)
        #expect(answer["renewed_generation"] as? Int == generation + 1, "report_invalid returns the new session")
        #expect(answer["rotated"] as? Int == generation + 1, "the subscriber heard the rotation")
        #expect(answer["rotated_token_differs"] as? Bool == true)
        #expect(answer["token_after"] as? String != token, "the refused token is not handed out again")
    }

    /// `CachingClient`: tokens from memory between rotations, never one within the margin of its expiry, never
    /// the token of a generation reported invalid once the daemon moved on. Sessions of 20 s renew about every
    /// 15 s, so 35 s of asking live through two or three rotations.
    @Test(.tags(.long)) func theCachingClientServesFromMemoryButNeverPastTheMargin() async throws {
        guard FileManager.default.fileExists(atPath: "/usr/bin/python3") else {
            #expect(!Skip.report("the caching client: /usr/bin/python3 is missing (make deps installs python3)"))
            return
        }
        let running = try await RunningDaemon.start(sessionTimeout: 20, provider: false)
        defer { running.stop() }
        let script = try running.dir.write("cache.py", """
            import json, sys, time
            sys.dont_write_bytecode = True
            sys.path.insert(0, sys.argv[2])
            from bunq_sessiond import CachingClient, _timestamp

            client = CachingClient(sys.argv[1], margin=2.0)
            out = {"late": [], "tokens": []}
            began = time.monotonic()
            while time.monotonic() - began < 35:
                session = client.session("ops")
                now = time.time()
                if now >= _timestamp(session["expires_at"]) - 2.0:
                    out["late"].append([session["generation"], session["expires_at"], now])
                if session["token"] not in out["tokens"]:
                    out["tokens"].append(session["token"])
                time.sleep(0.002)
            before = client.session("ops")
            client.report_invalid("ops", before["generation"])
            time.sleep(1)
            out["after_report_differs"] = client.token("ops") != before["token"]
            out["hits"], out["misses"] = client.hits, client.misses
            print(json.dumps(out), flush=True)
            """)
        let child = try ChildProcess("/usr/bin/python3", [script, running.socket,
                                                         PythonClientTests.repository.appendingPathComponent("clients/python").path],
                                     log: running.dir.path("cache.log"))
        defer { _ = child.stop(signal: SIGKILL) }
        #expect(await child.waitFor(.seconds(90)) { $0.contains("\"hits\"") }, "\(child.log)")
        let line = child.log.split(separator: "\n").last { $0.hasPrefix("{") } ?? ""
        let answer = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "\(child.log)")
        #expect((answer["late"] as? [Any])?.isEmpty == true, "never within the margin of expiry: \(line.prefix(500))")
        #expect((answer["tokens"] as? [String])?.count ?? 0 >= 2, "it followed the rotations")
        let hits = answer["hits"] as? Int ?? 0, misses = answer["misses"] as? Int ?? 0
        #expect(hits > 1_000 && misses <= 12, "hits \(hits), misses \(misses): from memory between rotations")
        #expect(answer["after_report_differs"] as? Bool == true, "a token reported invalid is not served again")
    }
}
