-- Template images: a version's uploaded disk image, stored under
-- <data_dir>/templates/<template id>/<number>.img. `image_sha256` is set once the image is
-- complete (NULL: the version has no image); `size_bytes` then holds the image's size.

ALTER TABLE template_versions ADD COLUMN format TEXT NOT NULL DEFAULT 'raw';
ALTER TABLE template_versions ADD COLUMN image_sha256 TEXT;
ALTER TABLE template_versions ADD COLUMN image_uploaded_at TEXT;
