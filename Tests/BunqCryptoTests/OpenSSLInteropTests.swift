import BunqCrypto
import Foundation
import TestThreads
import Testing
import TestSupport

/// Signatures and keys interoperate with the `openssl` command in both directions.
@Suite(.ownThread) struct OpenSSLInteropTests {
    @Test func opensslSignatureVerifiesInSwift() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                           "-out", dir.path("key.pem")])
        try Command.check(["openssl", "pkey", "-in", dir.path("key.pem"), "-pubout", "-out", dir.path("pub.pem")])
        let body = #"{"description":"bunq-sessiond \/ test","secret":"x"}"#
        _ = try dir.write("body.json", body)
        try Command.check(["openssl", "dgst", "-sha256", "-sign", dir.path("key.pem"),
                           "-out", dir.path("body.sig"), dir.path("body.json")])
        let signature = Array(try Data(contentsOf: URL(fileURLWithPath: dir.path("body.sig"))))

        let publicKey = try RSAPublicKey(pem: dir.read("pub.pem"))
        try publicKey.verify(signature: signature, for: Array(body.utf8))
        // The private key openssl wrote (PKCS#8) signs identically in Swift: PKCS#1 v1.5 is deterministic.
        let privateKey = try RSAPrivateKey(pem: dir.read("key.pem"))
        #expect(try privateKey.signature(for: Array(body.utf8)) == signature)
    }

    @Test func swiftSignatureVerifiesWithOpenSSL() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let key = try await RSAPrivateKey.generate()
        _ = try dir.write("pub.pem", key.publicKey.pem())
        let body = String(repeating: "a signed body ✓ ", count: 100)
        _ = try dir.write("body.txt", body)
        try Data(key.signature(for: Array(body.utf8))).write(to: URL(fileURLWithPath: dir.path("body.sig")))
        let verified = try Command.run(["openssl", "dgst", "-sha256", "-verify", dir.path("pub.pem"),
                                        "-signature", dir.path("body.sig"), dir.path("body.txt")])
        #expect(verified.status == 0)
        #expect(verified.stdoutText.contains("Verified OK"))

        // A tampered file fails openssl's verification too: the check above could fail.
        _ = try dir.write("body.txt", body + " ")
        let tampered = try Command.run(["openssl", "dgst", "-sha256", "-verify", dir.path("pub.pem"),
                                        "-signature", dir.path("body.sig"), dir.path("body.txt")])
        #expect(tampered.status != 0)
    }

    @Test func generatedKeysExportAsPKCS8AndSPKIThatOpenSSLReads() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let key = try await RSAPrivateKey.generate()
        #expect(key.bits == 2048)
        let privatePEM = try key.pkcs8PEM()
        #expect(privatePEM.hasPrefix(pemBegin("PRIVATE KEY") + "\n"))
        let publicPEM = try key.publicKey.pem()
        #expect(publicPEM.hasPrefix("-----BEGIN PUBLIC KEY-----\n"))
        #expect(publicPEM.hasSuffix("-----END PUBLIC KEY-----\n") && !publicPEM.hasSuffix("\n\n"))
        let bodyLines = publicPEM.split(separator: "\n").dropFirst().dropLast()
        #expect(bodyLines.dropLast().allSatisfy { $0.count == 64 })

        _ = try dir.write("key.pem", privatePEM)
        let derived = try Command.check(["openssl", "pkey", "-in", dir.path("key.pem"), "-pubout"])
        #expect(derived.stdoutText == publicPEM)
        // Round trip through our own reader keeps the key.
        #expect(try RSAPrivateKey(pem: privatePEM).publicKey.matches(key.publicKey))
    }

    @Test func pkcs1KeysAreRead() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "genpkey", "-algorithm", "RSA", "-out", dir.path("key.pem")])
        try Command.check(["openssl", "rsa", "-in", dir.path("key.pem"), "-traditional", "-out", dir.path("rsa.pem")])
        try Command.check(["openssl", "rsa", "-in", dir.path("key.pem"), "-RSAPublicKey_out", "-out", dir.path("rsapub.pem")])
        let pkcs1 = try dir.read("rsa.pem")
        #expect(pkcs1.hasPrefix(pemBegin("RSA PRIVATE KEY")))
        let rsaPublic = try dir.read("rsapub.pem")
        #expect(rsaPublic.hasPrefix("-----BEGIN RSA PUBLIC KEY-----"))

        let privateKey = try RSAPrivateKey(pem: pkcs1)
        let publicKey = try RSAPublicKey(pem: rsaPublic)
        #expect(publicKey.matches(privateKey.publicKey))
        let signature = try privateKey.signature(for: Array("x".utf8))
        try publicKey.verify(signature: signature, for: Array("x".utf8))
    }
}

/// Public-key decoding is stable: every decode of a valid key succeeds, from any thread, with or without the
/// trailing newline bunq's SDKs leave off. (The first-decode-in-a-fresh-process case, which OpenSSL 3.0's decoder
/// path failed now and then, is covered by sdk-compat against freshly started sandboxes.)
@Suite(.ownThread) struct PublicKeyDecodingTests {
    @Test func everyDecodeOfAValidKeySucceedsUnderConcurrency() async throws {
        let pems = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<4 { group.addTask { try await RSAPrivateKey.generate().publicKey.pem() } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        // The form bunq's SDKs send: no trailing newline.
        let variants = pems + pems.map { String($0.dropLast()) }
        let failures = await withTaskGroup(of: Int.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var failed = 0
                    for round in 0..<250 {
                        let pem = variants[(worker + round) % variants.count]
                        if (try? RSAPublicKey(pem: pem).pem()) != pems[(worker + round) % pems.count] { failed += 1 }
                    }
                    return failed
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
    }
}
