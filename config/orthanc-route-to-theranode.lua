-- Orthanc auto-routing to theranode (Orthanc's Lua scripting, tested with Orthanc 1.10).
--
-- Add to Orthanc's configuration:
--   "DicomModalities": { "theranode": { "AET": "THERANODE", "Host": "<node>", "Port": 11112 } },
--   "LuaScripts": [ "/path/to/orthanc-route-to-theranode.lua" ],
--   "StableAge": 60
--
-- When a study has been stable for StableAge seconds, its NM, PT, CT, RTSTRUCT and
-- SEG series are sent to theranode. theranode's own results (RTDOSE, SR, DOC) stored
-- back into the study are not sent again; series theranode already holds are
-- answered as identical duplicates and cost nothing.

local WANTED = { NM = true, PT = true, CT = true, RTSTRUCT = true, SEG = true }

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local resources = {}
  for _, s in ipairs(series) do
    if WANTED[s['MainDicomTags']['Modality']] then
      table.insert(resources, s['ID'])
    end
  end
  if #resources > 0 then
    RestApiPost('/modalities/theranode/store',
                DumpJson({ Resources = resources, Synchronous = false }, true))
  end
end
