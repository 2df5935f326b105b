import COpenSSL
import Dispatch
import Foundation

/// Owns one OpenSSL `EVP_PKEY` holding an RSA key, freed when the last reference goes.
///
/// `@unchecked Sendable`: the key is never modified after construction, and OpenSSL 3 allows concurrent use of
/// an unmodified `EVP_PKEY` from many threads (openssl-threads(7)).
final class EVPKey: @unchecked Sendable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        EVP_PKEY_free(pointer)
    }

    /// The key's modulus size in bytes, which is also the size of every signature it makes.
    var signatureSize: Int { Int(EVP_PKEY_get_size(pointer)) }

    var bits: Int { Int(EVP_PKEY_get_bits(pointer)) }

    /// Checks the key is RSA of at least 2048 bits; `what` names the key in the error.
    static func requireRSA(_ pointer: OpaquePointer, _ what: String) throws -> EVPKey {
        let key = EVPKey(taking: pointer)
        guard EVP_PKEY_is_a(pointer, "RSA") == 1 else {
            let type = EVP_PKEY_get0_type_name(pointer).map { String(cString: $0) } ?? "unknown"
            throw CryptoError(.unsupportedKeyType, "\(what) is a \(type) key; an RSA key is required")
        }
        guard key.bits >= 2048 else {
            throw CryptoError(.weakKey, "\(what) is RSA-\(key.bits); at least 2048 bits are required")
        }
        return key
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`, 64-character lines, one trailing newline).
    func publicKeyPEM() throws -> String {
        let bytes = try MemoryBIO.writing(.internalError, "the public key PEM") { PEM_write_bio_PUBKEY($0, pointer) }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// An `EVP_MD_CTX` after `EVP_DigestSignInit` with one key and SHA-256, used only as the source of copies.
///
/// `@unchecked Sendable`: never modified after `init`; `EVP_MD_CTX_copy_ex` only reads it.
final class SignTemplate: @unchecked Sendable {
    let context: OpaquePointer

    init?(_ key: EVPKey) {
        guard let context = EVP_MD_CTX_new() else { return nil }
        guard EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key.pointer) == 1 else {
            EVP_MD_CTX_free(context)
            OpenSSLErrorQueue.clear()
            return nil
        }
        self.context = context
    }

    deinit {
        EVP_MD_CTX_free(context)
    }
}

/// An RSA private key: the installation key bunq-sessiond signs requests with, or an eIDAS certificate's key.
///
/// Its `description` is redacted, so a key interpolated into a log line never prints its material.
public struct RSAPrivateKey: Sendable, CustomStringConvertible {
    let key: EVPKey

    /// A digest-sign context initialised once with this key; each signature copies it instead of paying
    /// OpenSSL 3's per-call algorithm fetch and set-up again.
    let signTemplate: SignTemplate?

    init(key: EVPKey) {
        self.key = key
        self.signTemplate = SignTemplate(key)
    }

    /// Generates a fresh key. RSA generation takes tens to hundreds of milliseconds, so it runs on a Dispatch
    /// worker thread, never on Swift concurrency's cooperative pool.
    public static func generate(bits: Int = 2048) async throws -> RSAPrivateKey {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                continuation.resume(with: Result { try generateBlocking(bits: bits) })
            }
        }
    }

    /// Generates a key on the calling thread; prefer `generate(bits:)` from async code.
    public static func generateBlocking(bits: Int = 2048) throws -> RSAPrivateKey {
        guard bits >= 2048, bits <= 16384 else {
            throw CryptoError(.weakKey, "RSA keys must have 2048 to 16384 bits, not \(bits)")
        }
        guard let context = EVP_PKEY_CTX_new_from_name(nil, "RSA", nil) else {
            throw CryptoError.openSSL(.keyGenerationFailed, "could not create an RSA key generation context")
        }
        defer { EVP_PKEY_CTX_free(context) }
        var pointer: OpaquePointer?
        guard EVP_PKEY_keygen_init(context) == 1,
              EVP_PKEY_CTX_set_rsa_keygen_bits(context, Int32(bits)) == 1,
              EVP_PKEY_keygen(context, &pointer) == 1,
              let pointer
        else {
            throw CryptoError.openSSL(.keyGenerationFailed, "RSA-\(bits) key generation failed")
        }
        return RSAPrivateKey(key: EVPKey(taking: pointer))
    }

    /// Reads an unencrypted RSA private key from PEM: PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    public init(pem: String) throws {
        let blocks = try PEMBlock.blocks(in: pem)
        guard let block = blocks.first(where: { $0.label.hasSuffix("PRIVATE KEY") }) else {
            throw CryptoError(.invalidPEM, "no PEM private key block found"
                + (blocks.isEmpty ? "" : " (found: \(blocks.map(\.label).joined(separator: ", ")))"))
        }
        guard block.label != "ENCRYPTED PRIVATE KEY", !block.text.contains("Proc-Type: 4,ENCRYPTED") else {
            throw CryptoError(.encryptedKey, "the private key is passphrase-protected; provide it unencrypted "
                + "through a protected file or a systemd credential")
        }
        OpenSSLErrorQueue.clear()
        let pointer = try MemoryBIO.reading(Array(block.text.utf8)) { bio in
            // A password callback that refuses, so OpenSSL never prompts on a terminal.
            PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil)
        }
        guard let pointer else {
            throw CryptoError.openSSL(.invalidKey, "could not decode the '\(block.label)' PEM block")
        }
        self.key = try EVPKey.requireRSA(pointer, "the private key")
        self.signTemplate = SignTemplate(key)
    }

    /// The public half of this key.
    public var publicKey: RSAPublicKey {
        EVP_PKEY_up_ref(key.pointer)
        return RSAPublicKey(key: EVPKey(taking: key.pointer))
    }

    public var bits: Int { key.bits }

    /// PKCS#8 PEM (the `PRIVATE KEY` label). Secret material: store it encrypted, never log it.
    public func pkcs8PEM() throws -> String {
        let bytes = try MemoryBIO.writing(.internalError, "the private key PEM") { bio in
            PEM_write_bio_PrivateKey(bio, key.pointer, nil, nil, 0, nil, nil)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// RSA PKCS#1 v1.5 signature over SHA-256 of exactly `message`.
    public func signature(for message: some ContiguousBytes) throws -> [UInt8] {
        guard let context = EVP_MD_CTX_new() else {
            throw CryptoError.openSSL(.internalError, "could not allocate a digest context")
        }
        defer { EVP_MD_CTX_free(context) }
        let ready = if let signTemplate { EVP_MD_CTX_copy_ex(context, signTemplate.context) == 1 }
            else { EVP_DigestSignInit(context, nil, EVP_sha256(), nil, key.pointer) == 1 }
        guard ready else {
            throw CryptoError.openSSL(.signingFailed, "could not start an RSA-SHA256 signature")
        }
        var length = key.signatureSize
        var signature = [UInt8](repeating: 0, count: length)
        let status = message.withUnsafeBytes { input in
            signature.withUnsafeMutableBufferPointer { output in
                EVP_DigestSign(context, output.baseAddress, &length,
                               input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count)
            }
        }
        guard status == 1 else { throw CryptoError.openSSL(.signingFailed, "RSA-SHA256 signing failed") }
        return Array(signature.prefix(length))
    }

    /// The signature as bunq expects it in `X-Bunq-Client-Signature`: standard base64 with padding.
    public func base64Signature(for message: some ContiguousBytes) throws -> String {
        Data(try signature(for: message)).base64EncodedString()
    }

    public var description: String { "RSAPrivateKey(\(bits) bits, redacted)" }
}

/// An RSA public key: a client's installation key, bunq's server key, or a certificate's key.
public struct RSAPublicKey: Sendable, CustomStringConvertible {
    let key: EVPKey

    init(key: EVPKey) {
        self.key = key
    }

    /// Reads an RSA public key from PEM: SubjectPublicKeyInfo (`PUBLIC KEY`) or PKCS#1 (`RSA PUBLIC KEY`).
    public init(pem: String) throws {
        let blocks = try PEMBlock.blocks(in: pem)
        guard let block = blocks.first(where: { $0.label == "PUBLIC KEY" || $0.label == "RSA PUBLIC KEY" }) else {
            throw CryptoError(.invalidPEM, "no PEM public key block found"
                + (blocks.isEmpty ? "" : " (found: \(blocks.map(\.label).joined(separator: ", ")))"))
        }
        OpenSSLErrorQueue.clear()
        // Both forms go through `d2i_PUBKEY`, never `OSSL_DECODER`: see `decodePKCS1`.
        let pointer: OpaquePointer?
        if block.label == "PUBLIC KEY" {
            pointer = try MemoryBIO.reading(Array(block.text.utf8)) { bio in PEM_read_bio_PUBKEY(bio, nil, nil, nil) }
        } else {
            pointer = Self.decodePKCS1(block)
        }
        guard let pointer else {
            throw CryptoError.openSSL(.invalidKey, "could not decode the '\(block.label)' PEM block")
        }
        self.key = try EVPKey.requireRSA(pointer, "the public key")
    }

    /// PKCS#1 `RSA PUBLIC KEY`: the DER wrapped as the SubjectPublicKeyInfo it is the key of, then read as SPKI.
    ///
    /// Not through `OSSL_DECODER`: on OpenSSL 3.0 (Debian 12) the first decoder-based public-key decode in a
    /// process failed now and then with "DECODER routines::unsupported" for a valid key (seen in bunq-sandbox
    /// with bunq's Python SDK); the `d2i_PUBKEY` path never did.
    private static func decodePKCS1(_ block: PEMBlock) -> OpaquePointer? {
        let body = block.text.split(separator: "\n").filter { !$0.hasPrefix("-----") && !$0.contains(":") }.joined()
        guard let pkcs1 = Data(base64Encoded: body) else { return nil }
        // SEQUENCE { SEQUENCE { OID rsaEncryption, NULL }, BIT STRING { 0 unused bits, RSAPublicKey } }
        let algorithm: [UInt8] = [0x30, 0x0D, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01, 0x05, 0x00]
        let bitString = DER.element(tag: 0x03, [0x00] + Array(pkcs1))
        let spki = DER.element(tag: 0x30, algorithm + bitString)
        return spki.withUnsafeBufferPointer { buffer in
            var cursor = buffer.baseAddress
            return d2i_PUBKEY(nil, &cursor, buffer.count)
        }
    }

    public var bits: Int { key.bits }

    /// SubjectPublicKeyInfo PEM ending in exactly one newline: the form bunq's installation call takes and the
    /// first part of the PSD2 string-to-sign.
    public func pem() throws -> String {
        try key.publicKeyPEM()
    }

    /// Whether `signature` is a valid RSA PKCS#1 v1.5 SHA-256 signature of exactly `message`.
    /// Throws `malformedSignature` for a signature of the wrong length and `signatureMismatch` when it does not
    /// verify, so a caller can tell a truncated header from a forged or altered body.
    public func verify(signature: [UInt8], for message: some ContiguousBytes) throws {
        guard signature.count == key.signatureSize else {
            throw CryptoError(.malformedSignature,
                              "the signature is \(signature.count) bytes; an RSA-\(bits) signature is \(key.signatureSize)")
        }
        guard let context = EVP_MD_CTX_new() else {
            throw CryptoError.openSSL(.internalError, "could not allocate a digest context")
        }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, EVP_sha256(), nil, key.pointer) == 1 else {
            throw CryptoError.openSSL(.internalError, "could not start an RSA-SHA256 verification")
        }
        let status = message.withUnsafeBytes { input in
            EVP_DigestVerify(context, signature, signature.count,
                             input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count)
        }
        guard status == 1 else {
            // A mismatch is the expected negative outcome; OpenSSL's queue only repeats it.
            OpenSSLErrorQueue.clear()
            throw CryptoError(.signatureMismatch, "the signature does not match the message and key")
        }
    }

    /// `verify(signature:for:)` for a base64 signature as sent in `X-Bunq-Server-Signature`.
    public func verify(base64Signature: String, for message: some ContiguousBytes) throws {
        guard let signature = Data(base64Encoded: base64Signature) else {
            throw CryptoError(.malformedSignature, "the signature is not valid base64 (\(base64Signature.utf8.count) characters)")
        }
        try verify(signature: Array(signature), for: message)
    }

    /// Whether both keys are the same public key.
    public func matches(_ other: RSAPublicKey) -> Bool {
        EVP_PKEY_eq(key.pointer, other.key.pointer) == 1
    }

    public var description: String { "RSAPublicKey(\(bits) bits)" }
}

/// Minimal DER encoding: one element with a definite length.
enum DER {
    static func element(tag: UInt8, _ content: [UInt8]) -> [UInt8] {
        var length: [UInt8] = []
        if content.count < 0x80 {
            length = [UInt8(content.count)]
        } else {
            var remaining = content.count
            while remaining > 0 { length.insert(UInt8(remaining & 0xFF), at: 0); remaining >>= 8 }
            length.insert(0x80 | UInt8(length.count), at: 0)
        }
        return [tag] + length + content
    }
}
