{
  "targets": [
    {
      "target_name": "erofs_ondemand_native",
      "sources": [
        "native/addon.cc",
        "native/cachefiles.cc",
        "native/chunk_decode.cc",
        "native/errors.cc",
        "native/fanotify.cc",
        "native/fd_passing.cc",
        "native/fs_calls.cc",
        "native/fuse.cc",
        "native/reader_thread.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "cflags_cc!": ["-fno-exceptions"],
      "libraries": ["-lzstd"]
    },
    {
      "target_name": "erofs_ondemand_convert",
      "sources": [
        "native/convert/addon.cc",
        "native/convert/chunk_compress.cc",
        "native/convert/gzip_inflate.cc",
        "native/convert/zstd_inflate.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra"],
      "cflags_cc!": ["-fno-exceptions"],
      "libraries": ["-lzstd", "-lisal"]
    },
    {
      "target_name": "erofs-ondemand-holder",
      "type": "executable",
      "sources": ["native/holder/holder.cc"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra"]
    }
  ]
}
