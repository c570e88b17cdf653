"""Key and token minting for the JWT tests, with PyJWT and cryptography: a second,
independent implementation, so the gateway's own code does not grade itself.

  python3 jwt_tool.py keys DIR      writes rsa, ec256, ec384 and ed25519 key pairs
                                    (DIR/NAME.key, DIR/NAME.pub) and DIR/jwks.json
  python3 jwt_tool.py mint          reads a JSON list of {alg, key, claims, headers}
                                    on stdin ("key" is a PEM file path or an HMAC
                                    secret) and prints one token per line
"""

import base64
import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64(n: int, length: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(length, "big")).rstrip(b"=").decode()


def write_pair(directory: str, name: str, private) -> None:
    with open(f"{directory}/{name}.key", "wb") as f:
        f.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with open(f"{directory}/{name}.pub", "wb") as f:
        f.write(
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def jwk_of(name: str, private) -> dict:
    pub = private.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        n = pub.public_numbers()
        return {"kty": "RSA", "kid": name, "use": "sig", "n": b64(n.n, (n.n.bit_length() + 7) // 8), "e": b64(n.e, 3)}
    if isinstance(pub, ec.EllipticCurvePublicKey):
        n = pub.public_numbers()
        size = 32 if pub.curve.name == "secp256r1" else 48
        crv = "P-256" if size == 32 else "P-384"
        return {"kty": "EC", "kid": name, "crv": crv, "x": b64(n.x, size), "y": b64(n.y, size)}
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "kid": name, "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}


def keys(directory: str) -> None:
    pairs = {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate(),
    }
    for name, private in pairs.items():
        write_pair(directory, name, private)
        with open(f"{directory}/{name}.jwk", "w") as f:
            json.dump(jwk_of(name, private), f)


def seg(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


def forged(spec: dict) -> str:
    """Tokens no honest library makes: alg none, or HMAC keyed with a public key file."""
    import hashlib
    import hmac

    header = {"alg": spec["alg"], "typ": "JWT", **spec.get("headers", {})}
    message = seg(header) + "." + seg(spec["claims"])
    if spec["forge"] == "none":
        return message + "."
    with open(spec["key"], "rb") as f:
        secret = f.read()
    mac = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return message + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def mint() -> None:
    for spec in json.load(sys.stdin):
        if "forge" in spec:
            print(forged(spec))
            continue
        key = spec["key"]
        if spec["alg"].startswith("HS"):
            secret = key.encode()
        else:
            with open(key, "rb") as f:
                secret = f.read()
        print(jwt.encode(spec["claims"], secret, algorithm=spec["alg"], headers=spec.get("headers")))


if __name__ == "__main__":
    if sys.argv[1] == "keys":
        keys(sys.argv[2])
    else:
        mint()
