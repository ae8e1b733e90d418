-- Orthanc auto-routing to the mammo-scp node.
--
-- Every mammogram Orthanc stores is sent to the DICOM modality "mammo" (declared in
-- DicomModalities of orthanc.json: AE MAMMO_SCP). The node's own results (SEG, SR) come back
-- with Modality SEG/SR and from calling AE MAMMO_SCP; neither is ever sent back to it.
-- Load it with  "LuaScripts": [ "/path/to/route-mammo.lua" ]  in the Orthanc configuration.

local NODE_MODALITY = 'mammo'     -- the key in DicomModalities
local NODE_AET = 'MAMMO_SCP'      -- the node's ae_title

-- The storage SOP classes the node accepts; it refuses every other at association time.
local ACCEPTED_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.1.2'] = true,     -- Digital Mammography X-Ray, For Presentation
  ['1.2.840.10008.5.1.4.1.1.1.2.1'] = true,   -- Digital Mammography X-Ray, For Processing
  ['1.2.840.10008.5.1.4.1.1.13.1.3'] = true,  -- Breast Tomosynthesis
}

local function trim(value)
  if value == nil then
    return ''
  end
  return (string.gsub(tostring(value), '^%s*(.-)%s*$', '%1'))
end

function OnStoredInstance(instanceId, tags, metadata, origin)
  if trim(tags['Modality']) ~= 'MG' then
    return
  end

  -- Where did it come from? origin (Orthanc >= 1.4) or the RemoteAET metadata.
  local remoteAet = ''
  if origin ~= nil and origin['RemoteAet'] ~= nil then
    remoteAet = trim(origin['RemoteAet'])
  elseif metadata ~= nil and metadata['RemoteAET'] ~= nil then
    remoteAet = trim(metadata['RemoteAET'])
  end
  if remoteAet == NODE_AET then
    return
  end

  local sopClass = trim(tags['SOPClassUID'])
  if not ACCEPTED_SOP_CLASSES[sopClass] then
    print('route-mammo: instance ' .. instanceId .. ' is MG but of SOP class ' .. sopClass ..
          ', which the node does not accept; not sent')
    return
  end

  print('route-mammo: sending instance ' .. instanceId .. ' to ' .. NODE_MODALITY)
  SendToModality(instanceId, NODE_MODALITY)
end
