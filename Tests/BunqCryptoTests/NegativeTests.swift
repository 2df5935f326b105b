import BunqCrypto
import Foundation
import TestThreads
import Testing
import TestSupport

/// Every kind of bad input ends in its own specific error, never a crash.
@Suite(.ownThread) struct NegativeTests {
    static let body = Array(#"{"secret":"sandbox_0123456789abcdef"}"#.utf8)

    func expectCode(_ code: CryptoError.Code, _ operation: () throws -> Void,
                    sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try operation()
            Issue.record("expected \(code.rawValue), but it succeeded", sourceLocation: sourceLocation)
        } catch let error as CryptoError {
            #expect(error.code == code, "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected CryptoError.\(code.rawValue), got \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func tamperedBodyAndWrongKeyAreSignatureMismatches() async throws {
        let key = try await RSAPrivateKey.generate()
        let other = try await RSAPrivateKey.generate()
        let signature = try key.base64Signature(for: Self.body)
        try key.publicKey.verify(base64Signature: signature, for: Self.body)

        var tampered = Self.body
        tampered[10] ^= 0x01
        expectCode(.signatureMismatch) { try key.publicKey.verify(base64Signature: signature, for: tampered) }
        expectCode(.signatureMismatch) { try key.publicKey.verify(base64Signature: signature, for: Self.body + [0x0A]) }
        expectCode(.signatureMismatch) { try other.publicKey.verify(base64Signature: signature, for: Self.body) }
    }

    @Test func truncatedOrGarbledBase64IsMalformed() async throws {
        let key = try await RSAPrivateKey.generate()
        let signature = try key.base64Signature(for: Self.body)
        expectCode(.malformedSignature) { try key.publicKey.verify(base64Signature: String(signature.dropLast(3)), for: Self.body) }
        // Still valid base64 after dropping a whole quantum, but too short for RSA-2048.
        expectCode(.malformedSignature) { try key.publicKey.verify(base64Signature: String(signature.dropLast(4)), for: Self.body) }
        expectCode(.malformedSignature) { try key.publicKey.verify(base64Signature: "not base64 at all!", for: Self.body) }
        expectCode(.malformedSignature) { try key.publicKey.verify(base64Signature: "", for: Self.body) }
    }

    @Test func garbagePEMIsRejected() {
        expectCode(.invalidPEM) { _ = try RSAPrivateKey(pem: "hello") }
        expectCode(.invalidPEM) { _ = try RSAPublicKey(pem: "") }
        expectCode(.invalidPEM) { _ = try Certificate(pem: "-----BEGIN CERTIFICATE-----\nMIIB\n") }
        expectCode(.invalidPEM) { _ = try RSAPublicKey(pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PRIVATE KEY-----\n") }
        // A well-framed block with garbage inside is an invalid key, with OpenSSL's reason attached.
        do {
            _ = try RSAPrivateKey(pem: pemBlock("PRIVATE KEY", "bm90IGEga2V5"))
            Issue.record("garbage key decoded")
        } catch let error as CryptoError {
            #expect(error.code == .invalidKey)
            #expect(error.openSSLReason != nil, "OpenSSL's reason should be attached: \(error)")
        } catch {
            Issue.record("unexpected \(error)")
        }
        expectCode(.invalidKey) { _ = try RSAPublicKey(pem: "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n") }
        expectCode(.invalidCertificate) { _ = try Certificate(pem: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n") }
    }

    @Test func ecKeysAreRefusedWhereRSAIsRequired() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-out", dir.path("ec.pem")])
        try Command.check(["openssl", "pkey", "-in", dir.path("ec.pem"), "-pubout", "-out", dir.path("ecpub.pem")])
        try Command.check(["openssl", "ec", "-in", dir.path("ec.pem"), "-out", dir.path("ec-traditional.pem")])
        try Command.check(["openssl", "req", "-x509", "-key", dir.path("ec.pem"), "-subj", "/CN=EC PISP",
                           "-days", "1", "-out", dir.path("ec-cert.pem")])
        expectCode(.unsupportedKeyType) { _ = try RSAPrivateKey(pem: dir.read("ec.pem")) }
        expectCode(.unsupportedKeyType) { _ = try RSAPrivateKey(pem: dir.read("ec-traditional.pem")) }
        expectCode(.unsupportedKeyType) { _ = try RSAPublicKey(pem: dir.read("ecpub.pem")) }
        let certificate = try Certificate(pem: dir.read("ec-cert.pem"))
        expectCode(.unsupportedKeyType) { _ = try certificate.publicKey() }
    }

    @Test func encryptedAndWeakKeysAreRefused() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        try Command.check(["openssl", "genpkey", "-algorithm", "RSA", "-aes-256-cbc", "-pass", "pass:secret",
                           "-out", dir.path("encrypted.pem")])
        try Command.check(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024",
                           "-out", dir.path("weak.pem")])
        expectCode(.encryptedKey) { _ = try RSAPrivateKey(pem: dir.read("encrypted.pem")) }
        expectCode(.weakKey) { _ = try RSAPrivateKey(pem: dir.read("weak.pem")) }
    }

    @Test func errorsNeverCarryKeyMaterial() async throws {
        let key = try await RSAPrivateKey.generate()
        let pem = try key.pkcs8PEM()
        let secretLine = String(pem.split(separator: "\n")[1])
        let broken = pem.replacingOccurrences(of: "-----END PRIVATE KEY-----", with: "")
        do {
            _ = try RSAPrivateKey(pem: broken)
            Issue.record("a truncated key decoded")
        } catch {
            #expect(!"\(error)".contains(secretLine))
        }
        #expect(!"\(key)".contains(secretLine) && "\(key)".contains("redacted"))
    }
}
