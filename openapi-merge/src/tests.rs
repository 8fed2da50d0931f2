use super::*;

fn input(name: &str, prefix: &str, doc: Value) -> Input {
    Input {
        name: name.into(),
        prefix: prefix.into(),
        strip_prefix: true,
        document: doc,
    }
}

fn spec(paths: Value, components: Value) -> Value {
    json!({ "openapi": "3.0.3", "info": { "title": "t", "version": "1" }, "paths": paths, "components": components })
}

#[test]
fn conflict_table() {
    let pet = json!({ "type": "object", "properties": { "id": { "type": "integer" } } });
    let error = json!({ "type": "object", "properties": { "message": { "type": "string" } } });
    let orders = spec(
        json!({ "/orders": { "get": { "operationId": "list", "tags": ["orders"],
            "responses": { "200": { "description": "ok", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Item" } } } },
                           "default": { "$ref": "#/components/responses/Error" } } } } }),
        json!({
            "schemas": { "Item": { "type": "object", "properties": { "sku": { "type": "string" } } }, "Error": error, "Pet": pet },
            "responses": { "Error": { "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } } },
            "securitySchemes": { "auth": { "type": "http", "scheme": "bearer" } }
        }),
    );
    let users = spec(
        json!({ "/users/{id}": { "get": { "operationId": "list",
            "responses": { "200": { "description": "ok", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Item" } } } },
                           "default": { "$ref": "#/components/responses/Error" } } } } }),
        json!({
            "schemas": { "Item": { "type": "object", "properties": { "name": { "type": "string" } } }, "Error": error, "Pet": pet },
            "responses": { "Error": { "description": "error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } } },
            "securitySchemes": { "auth": { "type": "apiKey", "in": "header", "name": "X-API-Key" } }
        }),
    );
    let merged = merge(
        vec![
            input("orders", "/orders-api", orders),
            input("users", "/users-api", users),
        ],
        &Options::default(),
    )
    .unwrap();

    // Identical components are shared.
    assert_eq!(merged["components"]["schemas"]["Error"], error);
    assert_eq!(merged["components"]["schemas"]["Pet"], pet);
    assert!(merged["components"]["schemas"].get("users_Error").is_none());
    assert!(merged["components"]["responses"]
        .get("users_Error")
        .is_none());
    // Conflicting ones are renamed after the service, refs rewritten.
    assert_eq!(
        merged["components"]["schemas"]["users_Item"]["properties"]["name"]["type"],
        "string"
    );
    let users_op = &merged["paths"]["/users-api/users/{id}"]["get"];
    assert_eq!(
        users_op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/users_Item"
    );
    assert_eq!(
        merged["paths"]["/orders-api/orders"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["$ref"],
        "#/components/schemas/Item"
    );
    // Security scheme collision.
    assert_eq!(
        merged["components"]["securitySchemes"]["auth"]["type"],
        "http"
    );
    assert_eq!(
        merged["components"]["securitySchemes"]["users_auth"]["type"],
        "apiKey"
    );
    // operationId collision.
    assert_eq!(
        merged["paths"]["/orders-api/orders"]["get"]["operationId"],
        "list"
    );
    assert_eq!(users_op["operationId"], "users_list");
    // Tags kept, untagged operations tagged by service, grouped.
    assert_eq!(users_op["tags"], json!(["users"]));
    assert_eq!(users_op["x-portcullis-service"], "users");
    assert_eq!(
        merged["x-tagGroups"],
        json!([{ "name": "orders", "tags": ["orders"] }, { "name": "users", "tags": ["users"] }])
    );
    assert!(
        dangling_refs(&merged).is_empty(),
        "{:?}",
        dangling_refs(&merged)
    );
}

#[test]
fn a_shared_name_whose_dependency_differs_is_renamed_too() {
    let a = spec(
        json!({}),
        json!({ "schemas": {
        "Wrapper": { "type": "object", "properties": { "inner": { "$ref": "#/components/schemas/Inner" } } },
        "Inner": { "type": "string" } } }),
    );
    let b = spec(
        json!({}),
        json!({ "schemas": {
        "Wrapper": { "type": "object", "properties": { "inner": { "$ref": "#/components/schemas/Inner" } } },
        "Inner": { "type": "integer" } } }),
    );
    let merged = merge(
        vec![input("a", "/a", a), input("b", "/b", b)],
        &Options::default(),
    )
    .unwrap();
    let schemas = &merged["components"]["schemas"];
    assert_eq!(schemas["b_Inner"]["type"], "integer");
    assert_eq!(
        schemas["b_Wrapper"]["properties"]["inner"]["$ref"],
        "#/components/schemas/b_Inner"
    );
    assert_eq!(
        schemas["Wrapper"]["properties"]["inner"]["$ref"],
        "#/components/schemas/Inner"
    );
}

#[test]
fn prefixes_server_paths_and_conflicts() {
    let mut doc = spec(
        json!({ "/pets": { "get": { "responses": {} } } }),
        json!({}),
    );
    doc["servers"] = json!([{ "url": "https://petstore.example.com/api/v3" }]);
    let stripped = input("pets", "/petstore", doc.clone());
    let kept = Input {
        strip_prefix: false,
        ..input("pets2", "/api", doc.clone())
    };
    let merged = merge(vec![stripped], &Options::default()).unwrap();
    assert!(merged["paths"].get("/petstore/api/v3/pets").is_some());
    let merged = merge(vec![kept], &Options::default()).unwrap();
    assert!(merged["paths"].get("/api/v3/pets").is_some());
    let err = merge(
        vec![input("a", "/x", doc.clone()), input("b", "/x", doc)],
        &Options::default(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("`get` is defined by both `a` and `b`"),
        "{err}"
    );
}

#[test]
fn deterministic_and_yaml_round_trips() {
    let doc = spec(
        json!({ "/b": { "get": { "responses": {} } }, "/a": { "post": { "responses": {} } } }),
        json!({ "schemas": { "Z": {"type": "string"}, "A": {"enum": ["true", "1.0", "yes"]} } }),
    );
    let one = serde_json::to_string(
        &merge(vec![input("s", "/s", doc.clone())], &Options::default()).unwrap(),
    )
    .unwrap();
    let two = serde_json::to_string(
        &merge(vec![input("s", "/s", doc.clone())], &Options::default()).unwrap(),
    )
    .unwrap();
    assert_eq!(one, two);
    let merged = merge(vec![input("s", "/s", doc)], &Options::default()).unwrap();
    let yaml = to_yaml(&merged);
    assert_eq!(parse("out.yaml", &yaml).unwrap(), merged);
}

#[test]
fn other_versions_are_refused_with_a_pointer() {
    let err = merge(
        vec![input(
            "old",
            "/old",
            json!({ "swagger": "1.2", "paths": {} }),
        )],
        &Options::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("old: /swagger:"), "{err}");
    let err = merge(
        vec![input("x", "/x", json!({ "paths": {} }))],
        &Options::default(),
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("x: /openapi:"), "{err}");
}

#[test]
fn swagger_2_is_converted() {
    let doc = json!({
        "swagger": "2.0",
        "info": { "title": "old", "version": "1" },
        "host": "legacy.example.com", "basePath": "/api", "schemes": ["https"],
        "consumes": ["application/json"], "produces": ["application/json"],
        "paths": { "/pets/{id}": {
            "parameters": [ { "name": "id", "in": "path", "required": true, "type": "integer", "format": "int64" } ],
            "put": {
                "operationId": "updatePet",
                "parameters": [
                    { "name": "pet", "in": "body", "required": true, "schema": { "$ref": "#/definitions/Pet" } },
                    { "name": "tags", "in": "query", "type": "array", "items": { "type": "string" }, "collectionFormat": "csv" }
                ],
                "responses": { "200": { "description": "ok", "schema": { "$ref": "#/definitions/Pet" }, "headers": { "X-Rate": { "type": "integer" } } },
                               "default": { "$ref": "#/responses/Error" } }
            },
            "post": {
                "consumes": ["multipart/form-data"],
                "parameters": [ { "name": "photo", "in": "formData", "type": "file", "required": true } ],
                "responses": { "201": { "description": "uploaded" } }
            }
        } },
        "definitions": { "Pet": { "type": "object", "properties": { "name": { "type": "string", "x-nullable": true } } } },
        "responses": { "Error": { "description": "error", "schema": { "$ref": "#/definitions/Pet" } } },
        "securityDefinitions": {
            "basic": { "type": "basic" },
            "oauth": { "type": "oauth2", "flow": "application", "tokenUrl": "https://idp/token", "scopes": { "pets:write": "w" } }
        }
    });
    let merged = merge(vec![input("legacy", "/legacy", doc)], &Options::default()).unwrap();
    let item = &merged["paths"]["/legacy/api/pets/{id}"];
    assert_eq!(
        item["parameters"][0]["schema"],
        json!({ "type": "integer", "format": "int64" })
    );
    let put = &item["put"];
    assert_eq!(
        put["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Pet"
    );
    assert_eq!(put["requestBody"]["required"], true);
    assert_eq!(put["parameters"][0]["schema"]["items"]["type"], "string");
    assert_eq!(put["parameters"][0]["explode"], false);
    assert_eq!(
        put["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Pet"
    );
    assert_eq!(
        put["responses"]["200"]["headers"]["X-Rate"]["schema"]["type"],
        "integer"
    );
    assert_eq!(
        put["responses"]["default"]["$ref"],
        "#/components/responses/Error"
    );
    let upload = &item["post"]["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert_eq!(
        upload["properties"]["photo"],
        json!({ "type": "string", "format": "binary" })
    );
    assert_eq!(
        merged["components"]["schemas"]["Pet"]["properties"]["name"]["nullable"],
        true
    );
    assert_eq!(
        merged["components"]["securitySchemes"]["basic"],
        json!({ "type": "http", "scheme": "basic" })
    );
    assert_eq!(
        merged["components"]["securitySchemes"]["oauth"]["flows"]["clientCredentials"]["tokenUrl"],
        "https://idp/token"
    );
    assert!(
        dangling_refs(&merged).is_empty(),
        "{:?}",
        dangling_refs(&merged)
    );
}

#[test]
fn retain_services_hides_operations_tags_and_their_components() {
    let shared = json!({"type": "object", "properties": {"id": {"type": "string"}}});
    let pets = spec(
        json!({"/pets": {"get": {"operationId": "list", "tags": ["pets"],
            "responses": {"200": {"description": "ok", "content": {"application/json":
                {"schema": {"$ref": "#/components/schemas/Page"}}}}}}}}),
        json!({"schemas": {"Page": {"$ref": "#/components/schemas/Id"}, "Id": shared}}),
    );
    let admin = spec(
        json!({"/users": {"get": {"operationId": "list", "tags": ["users"],
            "responses": {"200": {"description": "ok", "content": {"application/json":
                {"schema": {"$ref": "#/components/schemas/Secret"}}}}}}},
            "/pets": {"delete": {"responses": {"204": {"description": "gone"}}}}}),
        json!({"schemas": {"Secret": {"type": "string"}, "Id": shared},
               "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}),
    );
    let merged = merge(
        vec![
            input("pets", "/pets-api", pets),
            input("admin", "/admin", admin),
        ],
        &Options::default(),
    )
    .unwrap();

    let mut everything = merged.clone();
    retain_services(&mut everything, &|_| true);
    assert_eq!(everything, merged, "keeping every service changes nothing");

    let mut public = merged.clone();
    retain_services(&mut public, &|service| service == "pets");
    assert!(public.pointer("/paths/~1pets-api~1pets/get").is_some());
    assert!(public.pointer("/paths/~1admin~1users").is_none());
    assert!(public.pointer("/paths/~1admin~1pets").is_none());
    let schemas: Vec<&String> = public["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        schemas,
        ["Id", "Page"],
        "Secret is only reachable from admin"
    );
    assert!(public
        .pointer("/components/securitySchemes/bearer")
        .is_some());
    let tags: Vec<&str> = public["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["pets"]);
    assert_eq!(public["x-tagGroups"].as_array().unwrap().len(), 1);
    assert!(dangling_refs(&public).is_empty());

    let mut nothing = merged;
    retain_services(&mut nothing, &|_| false);
    assert_eq!(nothing["paths"], json!({}));
    assert!(nothing.pointer("/components/schemas").is_none());
}

#[test]
fn refs_into_other_files_are_bundled() {
    let files: BTreeMap<&str, Value> = BTreeMap::from([
        (
            "specs/common.yaml",
            json!({"components": {"schemas": {"Error": {"type": "object", "properties": {
                "message": {"type": "string"},
                "cause": {"$ref": "#/components/schemas/Error"}}}}}}),
        ),
        (
            "specs/models/pet.json",
            json!({"type": "object", "properties": {
                "tag": {"$ref": "#/$defs/Tag"},
                "error": {"$ref": "../common.yaml#/components/schemas/Error"}},
                "$defs": {"Tag": {"type": "string"}}}),
        ),
    ]);
    let mut doc = spec(
        json!({"/pets": {"get": {"responses": {
            "200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "models/pet.json"}}}},
            "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "./common.yaml#/components/schemas/Error"}}}}}}}}),
        json!({"schemas": {"Error": {"type": "integer"}}}),
    );
    let loads = std::cell::RefCell::new(Vec::new());
    let mut load = |location: &str| {
        loads.borrow_mut().push(location.to_owned());
        files
            .get(location)
            .map(Value::to_string)
            .ok_or_else(|| format!("no such file: {location}"))
    };
    let warnings = bundle_external_refs("pets", &mut doc, "specs/main.yaml", &mut load).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        *loads.borrow(),
        ["specs/models/pet.json", "specs/common.yaml"],
        "each file read once"
    );

    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["Error"],
        json!({"type": "integer"}),
        "the document's own stays"
    );
    assert_eq!(
        doc.pointer("/paths/~1pets/get/responses/default/content/application~1json/schema/$ref"),
        Some(&json!("#/components/schemas/Error_2"))
    );
    assert_eq!(
        schemas["Error_2"]["properties"]["cause"]["$ref"],
        "#/components/schemas/Error_2"
    );
    assert_eq!(
        schemas["pet"]["properties"]["error"]["$ref"],
        "#/components/schemas/Error_2"
    );
    assert_eq!(
        schemas["pet"]["properties"]["tag"]["$ref"],
        "#/components/schemas/Tag"
    );
    assert_eq!(schemas["Tag"], json!({"type": "string"}));
    assert!(dangling_refs(&doc).is_empty(), "{:?}", dangling_refs(&doc));
    // The bundled document merges like any other.
    merge(vec![input("pets", "/pets", doc)], &Options::default()).unwrap();

    // An unresolvable ref stays as it is, and is reported.
    let mut broken = spec(
        json!({"/x": {"get": {"responses": {"200": {"$ref": "missing.yaml#/r"}}}}}),
        json!({}),
    );
    let before = broken.clone();
    let warnings = bundle_external_refs("svc", &mut broken, "main.yaml", &mut load).unwrap();
    assert_eq!(
        warnings,
        ["svc: $ref missing.yaml#/r: cannot read: no such file: missing.yaml; left unresolved"]
    );
    assert_eq!(broken["paths"], before["paths"]);
}
