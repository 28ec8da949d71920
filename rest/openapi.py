"""The OpenAPI 3 description of the REST API, served at /openapi.json."""

from __future__ import annotations

import copy
from typing import Any

from facerec import __version__
from facerec.credentials import FULL, READ
from facerec.messages import HASH_DESCRIPTION, HASH_PATTERN, MAX_NAME_LENGTH, OUTCOME_HEADER


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_HASH_PARAM = {"name": "image_hash", "in": "path", "required": True,
               "description": f"SHA-256 of the image bytes, {HASH_DESCRIPTION}",
               "schema": {"type": "string", "pattern": HASH_PATTERN}}
_SCANNED = {
    "description": "The image is queued (publisher confirm received) or already known",
    "headers": {OUTCOME_HEADER: {"description": "queued, duplicate or known_url",
                                      "schema": {"type": "string",
                                                 "enum": ["queued", "duplicate",
                                                          "known_url"]}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Hash"}}},
}
# gunicorn answers a request line over 4094 bytes itself, in HTML, before the app runs.
_URI_TOO_LONG = {"414": {"description": "request line too long (answered by gunicorn)",
                         "content": {"text/html": {"schema": {"type": "string"}}}}}
_UNAUTHORIZED = {"401": _error("credentials are configured and none (or a wrong one) was sent")}
_FORBIDDEN = {"403": _error("a read-only credential, or a write sent by another site's page "
                            "without a credential")}
_AUTH_AND_BROKER = {**_UNAUTHORIZED, **_FORBIDDEN,
                    "503": _error("RabbitMQ or Redis unavailable, or every slot for slow "
                                  "work busy; nothing was queued")}
# Who may call an operation (rest.access): nobody needs a credential for OPEN ones; with
# credentials configured, READ needs any, FULL a full-scope one.
_OPEN: dict[str, Any] = {"security": []}
_READ: dict[str, Any] = {"security": [{"bearer": []}], "x-facerec-scope": READ}
_FULL: dict[str, Any] = {"security": [{"bearer": []}], "x-facerec-scope": FULL}
_PERSON_PARAM = {"name": "person_id", "in": "path", "required": True,
                 "schema": {"type": "integer", "minimum": 0}}
_FACE_REF: dict[str, Any] = {"type": "object", "required": ["hash", "face", "box"],
             "properties": {"hash": {"type": "string", "pattern": HASH_PATTERN},
                            "face": {"type": "integer",
                                     "description": "the face's position in its image"},
                            "box": {"type": "array", "items": {"type": "integer"},
                                    "minItems": 4, "maxItems": 4, "nullable": True,
                                    "description": "top, right, bottom, left"}}}
_PERSON_SUMMARY: dict[str, Any] = {"type": "object", "required": ["id", "name", "faces", "face"],
                   "properties": {"id": {"type": "integer"},
                                  "name": {"type": "string", "nullable": True},
                                  "faces": {"type": "integer"},
                                  "face": {**_FACE_REF, "description": "the face shown"}}}
_ERASED = {"type": "object",
           "required": ["hash", "names", "faces", "matches", "stored_object", "dead_letters"],
           "properties": {"hash": {"type": "string", "pattern": HASH_PATTERN},
                          "names": {"type": "array", "items": {"type": "string"}},
                          "faces": {"type": "integer"}, "matches": {"type": "integer"},
                          "stored_object": {"type": "boolean"},
                          "dead_letters": {"type": "integer"}}}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "facerec", "version": __version__,
             "description": "Scan images for faces and find the images with matching faces."},
    "paths": {
        "/": {"get": {**_OPEN, "summary": "Service banner (load-balancer probe)", "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {
                "type": "object", "required": ["service", "status"],
                "properties": {"service": {"type": "string"},
                               "status": {"type": "string"}}}}}}}}},
        "/healthz": {"get": {**_OPEN, "summary": "Liveness: the process answers", "responses": {
            "200": {"description": "alive", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status"],
                "properties": {"status": {"type": "string"}}}}}}}}},
        "/readyz": {"get": {**_OPEN, "summary": "Readiness: Redis and RabbitMQ reachable",
                            "responses": {
            "200": {"description": "ready", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Readiness"}}}},
            "503": {"description": "not ready", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Readiness"}}}}}}},
        "/metrics": {"get": {**_OPEN, "summary": "Prometheus metrics", "responses": {
            "200": {"description": "text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/scan/image/{filename}": {"post": {
            **_FULL,
            "summary": "Scan an uploaded image; the body is the raw image bytes",
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "description": "the name recorded for this image",
                            "schema": {"type": "string", "minLength": 1,
                                       "maxLength": MAX_NAME_LENGTH}}],
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                        "minLength": 1}},
                "image/*": {"schema": {"type": "string", "format": "binary", "minLength": 1}}}},
            "responses": {"200": _SCANNED,
                          "409": _error("the image has as many names as one may have"),
                          "400": _error("empty body, or not a decodable JPEG/PNG/WebP/BMP/TIFF"),
                          "408": _error("the body arrived too slowly"),
                          "413": _error("larger than MAX_UPLOAD_BYTES"),
                          **_URI_TOO_LONG, **_AUTH_AND_BROKER}}},
        "/scan/url": {"post": {
            **_FULL,
            "summary": "Fetch an image by URL and scan it",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["url"],
                "properties": {"url": {"type": "string", "format": "uri",
                                       "description": "http or https URL"}}}}}},
            "responses": {"200": _SCANNED,
                          "409": _error("the image has as many names as one may have"),
                          "400": _error("missing or malformed URL, scheme not http(s), or a "
                                        "host that resolves to a non-public address"),
                          "408": _error("the body arrived too slowly"),
                          "413": _error("request body larger than MAX_UPLOAD_BYTES, or JSON "
                                        "over 16 KiB"),
                          "422": _error("the URL could not be fetched or is not an image"),
                          **_AUTH_AND_BROKER}}},
        "/match/{image_hash}": {"get": {
            **_READ,
            "summary": "Names of the other images with a face matching one in this image",
            "parameters": [_HASH_PARAM, {
                "name": "tolerance", "in": "query", "required": False,
                "description": "only images whose best face distance is at most this "
                               "(at most MATCH_TOLERANCE; default: all recorded matches)",
                "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0}}],
            "responses": {"200": {"description": "names; [] when unknown or without faces",
                                  "content": {"application/json": {"schema": {
                                      "type": "array", "items": {"type": "string"}}}}},
                          "400": _error("not a SHA-256 hex digest, or a tolerance out of "
                                        "range"),
                          **_URI_TOO_LONG, **_UNAUTHORIZED, "503": _error("Redis unavailable")}}},
        "/image/{image_hash}": {"get": {
            **_READ,
            "summary": "Status, faces, names and matches of one image",
            "parameters": [_HASH_PARAM],
            "responses": {"200": {"description": "what is known", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Image"}}}},
                          "400": _error("not a SHA-256 hex digest"),
                          "404": _error("never scanned"),
                          **_URI_TOO_LONG, **_UNAUTHORIZED, "503": _error("Redis unavailable")}},
            "delete": {
                **_FULL,
                "summary": "Erase the image: names, faces, matches, stored bytes, dead letters",
                "parameters": [_HASH_PARAM],
                "responses": {"200": {"description": "what was erased", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Erased"}}}},
                              "400": _error("not a SHA-256 hex digest"),
                              "404": _error("nothing is held for this hash"),
                              **_URI_TOO_LONG, **_AUTH_AND_BROKER}}},
        "/name/{name}": {"delete": {
            **_FULL,
            "summary": "Remove a name (URL-encoded; URLs are names too); an image left "
                       "without any name is erased",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "description": "the file name or URL, percent-encoded",
                            "schema": {"type": "string", "minLength": 1,
                                       "maxLength": MAX_NAME_LENGTH}}],
            "responses": {"200": {"description": "the name is gone", "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["name", "hash", "erased"],
                    "properties": {"name": {"type": "string"},
                                   "hash": {"type": "string", "nullable": True},
                                   "erased": {"type": "array", "items": {
                                       "$ref": "#/components/schemas/Erased"}}}}}}},
                          "404": _error("no image has this name"),
                          **_URI_TOO_LONG, **_AUTH_AND_BROKER}}},
        "/image/{image_hash}/content": {"get": {
            **_READ,
            "summary": "The stored image itself (IMAGE_STORE set and IMAGE_STORE_KEEP true)",
            "parameters": [_HASH_PARAM],
            "responses": {"200": {"description": "the image bytes", "content": {
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}},
                          "400": _error("not a SHA-256 hex digest"),
                          "404": _error("images are not stored, or not this one"),
                          **_URI_TOO_LONG, **_UNAUTHORIZED,
                          "503": _error("image store unavailable")}}},
        "/image/{image_hash}/thumbnail": {"get": {
            **_READ,
            "summary": "A JPEG of the stored image, at most 320 pixels on its longer side "
                       "(made once, kept beside the image, erased with it)",
            "parameters": [_HASH_PARAM],
            "responses": {"200": {"description": "the thumbnail", "content": {
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                          "304": {"description": "the copy the browser holds is current"},
                          "400": _error("not a SHA-256 hex digest, or stored bytes that "
                                        "cannot be decoded"),
                          "404": _error("images are not stored, or not this one"),
                          **_URI_TOO_LONG, **_UNAUTHORIZED,
                          "503": _error("image store unavailable, or every decoding slot "
                                        "busy")}}},
        "/image/{image_hash}/face/{face}": {"get": {
            **_READ,
            "summary": "One face of the image, cut from its thumbnail (128 pixels square)",
            "parameters": [_HASH_PARAM, {"name": "face", "in": "path", "required": True,
                                         "description": "the face's position in the image",
                                         "schema": {"type": "integer", "minimum": 0}}],
            "responses": {"200": {"description": "the face", "content": {
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                          "304": {"description": "the copy the browser holds is current"},
                          "400": _error("not a SHA-256 hex digest, or stored bytes that "
                                        "cannot be decoded"),
                          "404": _error("no such image or face, or images are not stored"),
                          **_URI_TOO_LONG, **_UNAUTHORIZED,
                          "503": _error("image store unavailable, or every decoding slot "
                                        "busy")}}},
        "/search": {"post": {
            **_READ,
            "summary": "Who is in this photo? Each face found and the stored images with a "
                       "matching face, nearest first; nothing is stored or queued",
            "parameters": [
                {"name": "tolerance", "in": "query", "required": False,
                 "description": "match distance (default MATCH_TOLERANCE)",
                 "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                            "maximum": 1}},
                {"name": "limit", "in": "query", "required": False,
                 "description": "matches per face at most",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
            "requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                        "minLength": 1}},
                "image/*": {"schema": {"type": "string", "format": "binary", "minLength": 1}}}},
            "responses": {"200": {"description": "the faces and their matches", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Search"}}}},
                          "400": _error("empty body, not a decodable image, or a parameter "
                                        "out of range"),
                          "413": _error("larger than MAX_UPLOAD_BYTES"),
                          **_UNAUTHORIZED,
                          "503": _error("no worker is serving searches, or none answered "
                                        "within SEARCH_TIMEOUT")}}},
        "/people": {"get": {
            **_READ,
            "summary": "The people the stored faces were grouped into, largest first",
            "parameters": [
                {"name": "offset", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": 10**9}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
            "responses": {"200": {"description": "one page of people", "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["people", "total", "offset", "limit"],
                    "properties": {"people": {"type": "array", "items": {
                        "$ref": "#/components/schemas/PersonSummary"}},
                                   "total": {"type": "integer"},
                                   "offset": {"type": "integer"},
                                   "limit": {"type": "integer"}}}}}},
                          "400": _error("offset or limit out of range"),
                          **_UNAUTHORIZED, "503": _error("Redis unavailable")}}},
        "/people/{person_id}": {
            "get": {
                **_READ,
                "summary": "One person: every face (image, box, the image's names)",
                "parameters": [_PERSON_PARAM],
                "responses": {"200": {"description": "the person", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Person"}}}},
                              "404": _error("no person with this id"),
                              **_UNAUTHORIZED, "503": _error("Redis unavailable")}},
            "put": {
                **_FULL,
                "summary": "Name a person (null clears the name); new faces keep joining it",
                "parameters": [_PERSON_PARAM],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {
                        "type": "string", "nullable": True, "minLength": 1,
                        "maxLength": 200, "pattern": "\\S",
                        "description": "trimmed; no control or invisible format "
                                       "characters"}}}}}},
                "responses": {"200": {"description": "the person", "content": {
                    "application/json": {"schema": {
                        "$ref": "#/components/schemas/PersonSummary"}}}},
                              "400": _error("not {\"name\": string or null}, or a name "
                                            "that is blank, too long or has control "
                                            "characters"),
                              "404": _error("no person with this id"),
                              "413": _error("JSON over 16 KiB"),
                              **_AUTH_AND_BROKER}},
            "delete": {
                **_FULL,
                "summary": "Erase the person: every image holding one of its faces is "
                           "erased as DELETE /image/{hash} erases it",
                "parameters": [_PERSON_PARAM],
                "responses": {"200": {"description": "what was erased", "content": {
                    "application/json": {"schema": {
                        "type": "object", "required": ["id", "erased", "images"],
                        "properties": {"id": {"type": "integer"},
                                       "erased": {"type": "array", "items": {
                                           "type": "string", "pattern": HASH_PATTERN}},
                                       "images": {"type": "array", "items": {
                                           "$ref": "#/components/schemas/Erased"}}}}}}},
                              "404": _error("no person with this id"),
                              **_AUTH_AND_BROKER}}},
        "/people/{person_id}/merge": {"post": {
            **_FULL,
            "summary": "Move every face of person `from` into this one",
            "parameters": [_PERSON_PARAM],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["from"],
                "properties": {"from": {"type": "integer", "minimum": 0}}}}}},
            "responses": {"200": {"description": "the merged person", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PersonSummary"}}}},
                          "400": _error("not {\"from\": id}"),
                          "404": _error("no person with one of these ids"),
                          "409": _error("they cannot be merged: a photo has a face of each, "
                                        "they are marked apart, or they are one already"),
                          "413": _error("JSON over 16 KiB"),
                          **_AUTH_AND_BROKER}}},
        "/people/{person_id}/split": {"post": {
            **_FULL,
            "summary": "Move faces that are not this person into a new person, marked "
                       "apart from this one (no face joining later merges them again)",
            "parameters": [_PERSON_PARAM],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["faces"],
                "properties": {"faces": {"type": "array", "minItems": 1, "maxItems": 200,
                                         "items": {
                                             "type": "object", "required": ["hash", "face"],
                                             "properties": {
                                                 "hash": {"type": "string",
                                                          "pattern": HASH_PATTERN},
                                                 "face": {"type": "integer",
                                                          "minimum": 0}}}}}}}}},
            "responses": {"200": {"description": "the new person and what is left", "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["person", "rest"],
                    "properties": {"person": {"$ref": "#/components/schemas/PersonSummary"},
                                   "rest": {"$ref": "#/components/schemas/PersonSummary"}}}}}},
                          "400": _error("not {\"faces\": [{\"hash\", \"face\"}, …]}"),
                          "404": _error("no person with this id"),
                          "409": _error("a face is not this person's, or these are all its "
                                        "faces"),
                          "413": _error("JSON over 16 KiB"),
                          **_AUTH_AND_BROKER}}},
        "/people/{person_id}/apart": {"post": {
            **_FULL,
            "summary": "Mark person `from` as never the same person as this one",
            "parameters": [_PERSON_PARAM],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["from"],
                "properties": {"from": {"type": "integer", "minimum": 0}}}}}},
            "responses": {"200": {"description": "this person", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/PersonSummary"}}}},
                          "400": _error("not {\"from\": id}"),
                          "404": _error("no person with one of these ids"),
                          "409": _error("a person cannot be apart from itself"),
                          "413": _error("JSON over 16 KiB"),
                          **_AUTH_AND_BROKER}}},
        "/openapi.json": {"get": {**_OPEN, "summary": "This document", "responses": {
            "200": {"description": "OpenAPI 3 document",
                    "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    },
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "A credential of API_KEYS (id:scope:secret) or API_TOKEN. Scope read: "
                       "the GET routes; scope full: everything (x-facerec-scope says which "
                       "an operation needs). Without any credential configured, all is open."}},
                   "schemas": {
        "Erased": _ERASED,
        "PersonSummary": _PERSON_SUMMARY,
        "Person": {**_PERSON_SUMMARY, "properties": {
            **_PERSON_SUMMARY["properties"],
            "faces": {"type": "array", "items": {
                **_FACE_REF, "required": ["hash", "face", "box", "names"],
                "properties": {**_FACE_REF["properties"],
                               "names": {"type": "array", "items": {"type": "string"}}}}}}},
        "Search": {"type": "object", "required": ["faces"], "properties": {"faces": {
            "type": "array", "items": {
                "type": "object", "required": ["box", "matches"],
                "properties": {
                    "box": {"type": "array", "items": {"type": "integer"},
                            "minItems": 4, "maxItems": 4,
                            "description": "top, right, bottom, left"},
                    "matches": {"type": "array", "items": {
                        "type": "object",
                        "required": ["hash", "names", "distance", "face", "person"],
                        "properties": {"hash": {"type": "string", "pattern": HASH_PATTERN},
                                       "names": {"type": "array",
                                                 "items": {"type": "string"}},
                                       "distance": {"type": "number"},
                                       "face": {"type": "integer",
                                                "description": "which face of that image"},
                                       "person": {
                                           "type": "object", "nullable": True,
                                           "required": ["id", "name"],
                                           "description": "the person of that face",
                                           "properties": {
                                               "id": {"type": "integer"},
                                               "name": {"type": "string",
                                                        "nullable": True}}}}}}}}}}},
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Hash": {"type": "object", "required": ["hash"],
                 "properties": {"hash": {"type": "string", "pattern": HASH_PATTERN}}},
        "Readiness": {"type": "object", "required": ["ready", "redis", "rabbitmq"],
                      "properties": {"ready": {"type": "boolean"},
                                     "redis": {"type": "boolean"},
                                     "rabbitmq": {"type": "boolean"}}},
        "Image": {"type": "object", "required": ["hash", "status", "names", "faces", "matches"],
                  "properties": {
                      "hash": {"type": "string"},
                      "status": {"type": "string", "enum": ["queued", "done", "failed"]},
                      "reason": {"type": "string"},
                      "names": {"type": "array", "items": {"type": "string"}},
                      "faces": {"type": "array", "items": {
                          "type": "object", "required": ["top", "right", "bottom", "left",
                                                         "person", "matches"],
                          "properties": {
                              **{k: {"type": "integer"}
                                 for k in ("top", "right", "bottom", "left")},
                              "person": {"type": "integer", "nullable": True,
                                         "description": "the person this face is in"},
                              "matches": {"type": "array", "description": (
                                  "faces of other images matching this one: which face "
                                  "of which image (face = its position there)"), "items": {
                                  "type": "object", "required": ["hash", "face", "distance"],
                                  "properties": {
                                      "hash": {"type": "string"},
                                      "face": {"type": "integer"},
                                      "distance": {"type": "number"}}}}}}},
                      "matches": {"type": "array", "items": {
                          "type": "object", "required": ["hash", "names", "distance"],
                          "properties": {"hash": {"type": "string"},
                                         "names": {"type": "array",
                                                   "items": {"type": "string"}},
                                         "distance": {"type": "number", "nullable": True}}}}}},
    }},
}


def document(match_tolerance: float) -> dict[str, Any]:
    """SPEC for a service whose MATCH_TOLERANCE is this: /match's tolerance may not exceed it."""
    spec = copy.deepcopy(SPEC)
    for parameter in spec["paths"]["/match/{image_hash}"]["get"]["parameters"]:
        if parameter["name"] == "tolerance":
            parameter["schema"]["maximum"] = match_tolerance
    return spec
